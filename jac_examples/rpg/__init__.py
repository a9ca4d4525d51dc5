"""The RPG level generator: the Jac program and the Python pieces around it.

- `level_generator.jac`: the `by llm()` pipeline (level -> map -> description, enemies, rating);
- `mapmodel`: plain-data view of a Map (duck-typed conversion, wall cells, BFS);
- `validator`: structured per-check validation of Map / Level outputs;
- `render`: ASCII and PNG renderings;
- `runner`: runs the Jac program in a subprocess.
"""

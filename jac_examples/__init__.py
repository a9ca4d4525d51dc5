"""The RPG showcase workload: a Jac level generator with several `by llm()` call sites,
a level validator, a renderer and an offline teacher that plays the upstream model.

Subpackages: `rpg` (the Jac program, validator, renderer, runner) and `teacher` (the
procedural OpenAI-compatible server). `cli` holds the `understudy levels ...` commands.
"""

"""Safe reading of the Python reprs byLLM puts in its prompts.

byLLM renders each argument as `name = (<python repr>, '<semstr>')`, where the repr of a Jac
object looks like a constructor call: `Level(name='Crypt', difficulty=3, ...)`. Those are
not literals, so `ast.literal_eval` refuses them; this module walks the expression tree
itself and turns calls into dicts tagged with `__type__`, without ever executing anything.
Anything it cannot read (e.g. `<EnemyKind.GOBLIN: 'goblin'>` or `<object at 0x..>`) stays
as its raw text, so a strange argument never breaks the teacher.
"""

from __future__ import annotations

import ast
from typing import Any

TYPE_KEY = "__type__"


class _Unreadable(ValueError):
    pass


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise _Unreadable(type(node).__name__)


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {str(_value(k)) if k is not None else "**": _value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
        raise _Unreadable("unary operator on a non-number")
    if isinstance(node, ast.Call):
        out: dict[str, Any] = {TYPE_KEY: _dotted(node.func)}
        if node.args:
            out["_args"] = [_value(a) for a in node.args]
        for kw in node.keywords:
            if kw.arg is None:
                raise _Unreadable("**kwargs in a repr")
            out[kw.arg] = _value(kw.value)
        return out
    if isinstance(node, (ast.Name, ast.Attribute)):
        # Bare names in reprs are enum members (`Kind.GOBLIN`) or specials (`inf`): keep the text.
        return _dotted(node)
    raise _Unreadable(type(node).__name__)


def parse_repr(text: str) -> Any:
    """The value a repr describes, as plain data; the raw text when it cannot be read."""
    try:
        return _value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, _Unreadable, RecursionError, ValueError):
        return text


def parse_arg_tuple(text: str) -> tuple[Any, str | None]:
    """Split the `(<repr>, '<semstr>')` right-hand side of an argument line.

    Returns (value, semstr). Falls back to splitting off the trailing semstr textually when
    the value's repr is not valid Python.
    """
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if isinstance(node, ast.Tuple) and len(node.elts) == 2:
            sem = node.elts[1]
            sem_value = sem.value if isinstance(sem, ast.Constant) and isinstance(sem.value, str) else None
            try:
                return _value(node.elts[0]), sem_value
            except (_Unreadable, RecursionError, ValueError):
                return ast.get_source_segment(text.strip(), node.elts[0]) or text, sem_value
    except (SyntaxError, RecursionError, ValueError):
        pass
    inner = text.strip()
    if inner.startswith("(") and inner.endswith(")"):
        inner = inner[1:-1]
    for sep in (", None", ", '", ', "'):
        cut = inner.rfind(sep)
        if cut > 0:
            sem_text = inner[cut + 2 :]
            sem = parse_repr(sem_text)
            return inner[:cut], sem if isinstance(sem, str) and sem != sem_text else None
    return inner, None


def strip_type(value: Any) -> Any:
    """Drop `__type__`/`_args` tags recursively (what a JSON answer would carry)."""
    if isinstance(value, dict):
        return {k: strip_type(v) for k, v in value.items() if k not in (TYPE_KEY, "_args")}
    if isinstance(value, list):
        return [strip_type(v) for v in value]
    return value

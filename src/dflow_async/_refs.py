"""References and expressions: how a step's inputs, keys and conditions point at values that
exist only at run time (template inputs, other steps' outputs, the fan-out ``item``).

References format as Dflow's placeholders (``{{inputs.parameters.iter}}``,
``{{steps.plus1.outputs.parameters.iter}}``, ``{{item}}``), so f-strings and %-formatting build
key templates exactly as in Dflow; those strings are rendered per execution by :func:`render`.
Python operators on references build :class:`Expr` trees, evaluated by the scheduler: nothing is
ever passed to ``eval``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

__all__ = [
    "Expr",
    "Ref",
    "Scope",
    "Unavailable",
    "evaluate",
    "if_expression",
    "item",
    "placeholders",
    "render",
]


class Unavailable(Exception):
    """A referenced value does not exist: its producer was skipped or failed."""


class Scope(Protocol):
    """What evaluation needs from the scheduler: the running template's values."""

    def input_value(self, name: str, kind: str) -> Any: ...
    def output_value(self, step: str, name: str, kind: str) -> Any: ...
    def item_value(self) -> Any: ...


class Ref:
    """Base of every run-time reference; operators build expressions."""

    __slots__ = ()
    __hash__ = object.__hash__

    def evaluate(self, scope: Scope) -> Any:
        raise NotImplementedError

    def placeholder(self) -> str:
        raise NotImplementedError

    def refs(self) -> Iterator[Ref]:
        """Every leaf reference inside (itself for a leaf)."""
        yield self

    def __str__(self) -> str:
        return self.placeholder()

    def __format__(self, spec: str) -> str:
        # f"iter-{ref:03d}": the spec applies to the value, when the string is rendered
        return _formatted(Expr(format, "format", self, spec)) if spec else self.placeholder()

    def __bool__(self) -> bool:
        raise TypeError(
            "a reference has no truth value until the workflow runs: combine conditions with "
            "& | ~ instead of and/or/not, and pass them as when=..."
        )

    # comparisons and arithmetic build expressions
    def __lt__(self, other: Any) -> Expr:
        return Expr(operator.lt, "<", self, other)

    def __le__(self, other: Any) -> Expr:
        return Expr(operator.le, "<=", self, other)

    def __gt__(self, other: Any) -> Expr:
        return Expr(operator.gt, ">", self, other)

    def __ge__(self, other: Any) -> Expr:
        return Expr(operator.ge, ">=", self, other)

    def __eq__(self, other: Any) -> Expr:  # type: ignore[override]
        return Expr(operator.eq, "==", self, other)

    def __ne__(self, other: Any) -> Expr:  # type: ignore[override]
        return Expr(operator.ne, "!=", self, other)

    def __add__(self, other: Any) -> Expr:
        return Expr(operator.add, "+", self, other)

    def __radd__(self, other: Any) -> Expr:
        return Expr(operator.add, "+", other, self)

    def __sub__(self, other: Any) -> Expr:
        return Expr(operator.sub, "-", self, other)

    def __rsub__(self, other: Any) -> Expr:
        return Expr(operator.sub, "-", other, self)

    def __mul__(self, other: Any) -> Expr:
        return Expr(operator.mul, "*", self, other)

    def __rmul__(self, other: Any) -> Expr:
        return Expr(operator.mul, "*", other, self)

    def __truediv__(self, other: Any) -> Expr:
        return Expr(operator.truediv, "/", self, other)

    def __floordiv__(self, other: Any) -> Expr:
        return Expr(operator.floordiv, "//", self, other)

    def __mod__(self, other: Any) -> Expr:
        return Expr(operator.mod, "%", self, other)

    def __and__(self, other: Any) -> Expr:
        return Expr(_and, "&", self, other)

    def __or__(self, other: Any) -> Expr:
        return Expr(_or, "|", self, other)

    def __invert__(self) -> Expr:
        return Expr(operator.not_, "~", self)

    def __neg__(self) -> Expr:
        return Expr(operator.neg, "-", self)

    def __getitem__(self, key: Any) -> Expr:
        return Expr(operator.getitem, "[]", self, key)

    def __len__(self) -> int:
        raise TypeError("len() of a reference is unknown before the run: use argo_len(ref)")


def _and(a: Any, b: Any) -> bool:
    return bool(a) and bool(b)


def _or(a: Any, b: Any) -> bool:
    return bool(a) or bool(b)


class Expr(Ref):
    """``fn(*args)`` evaluated at run time; args may be references or plain values."""

    __slots__ = ("args", "fn", "symbol")

    def __init__(self, fn: Callable[..., Any], symbol: str, *args: Any) -> None:
        self.fn = fn
        self.symbol = symbol
        self.args = args

    def evaluate(self, scope: Scope) -> Any:
        return self.fn(*(evaluate(a, scope) for a in self.args))

    def refs(self) -> Iterator[Ref]:
        for a in self.args:
            yield from iter_refs(a)

    def __str__(self) -> str:
        return _formatted(self)

    def __format__(self, spec: str) -> str:
        return _formatted(Expr(format, "format", self, spec) if spec else self)

    def placeholder(self) -> str:
        if len(self.args) == 2 and self.symbol != "[]":
            return f"({_show(self.args[0])} {self.symbol} {_show(self.args[1])})"
        if self.symbol == "[]":
            return f"{_show(self.args[0])}[{self.args[1]!r}]"
        return f"{self.symbol}({', '.join(_show(a) for a in self.args)})"

    def __repr__(self) -> str:
        return f"<expr {self.placeholder()}>"


def _show(value: Any) -> str:
    return value.placeholder() if isinstance(value, Ref) else repr(value)


class IfExpr(Ref):
    """``if_expression(_if, _then, _else)``: evaluates only the branch it takes, so the branch
    not taken may refer to a skipped step."""

    __slots__ = ("cond", "else_", "then")

    def __init__(self, cond: Any, then: Any, else_: Any) -> None:
        self.cond = cond
        self.then = then
        self.else_ = else_

    def evaluate(self, scope: Scope) -> Any:
        cond = evaluate(self.cond, scope)
        if isinstance(cond, str):
            cond = _truthy_string(cond)
        return evaluate(self.then if cond else self.else_, scope)

    def refs(self) -> Iterator[Ref]:
        for a in (self.cond, self.then, self.else_):
            yield from iter_refs(a)

    def __str__(self) -> str:
        return _formatted(self)

    def __format__(self, spec: str) -> str:
        return _formatted(Expr(format, "format", self, spec) if spec else self)

    def placeholder(self) -> str:
        return f"({_show(self.then)} if {_show(self.cond)} else {_show(self.else_)})"


#: Expressions formatted into strings (``key=f"iter-{p['i'] + 1}"``), by token. A string
#: holds ``{{=expr:<token>}}``, and rendering it evaluates the expression. The token is a
#: digest of the expression's text, so the same definition formats to the same string in every
#: process (run digests and resume depend on that).
_FORMATTED: dict[str, Ref] = {}


def _formatted(ref: Ref) -> str:
    import hashlib

    text = f"{type(ref).__name__}:{ref.placeholder()}:{_functions(ref)}"
    token = hashlib.sha256(text.encode()).hexdigest()[:20]
    _FORMATTED[token] = ref
    return "{{=expr:" + token + "}}"


def _functions(ref: Any) -> str:
    # what placeholder() does not show: which function an Expr applies
    if isinstance(ref, Expr):
        fn = ref.fn
        inner = ",".join(_functions(a) for a in ref.args)
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', fn)}({inner})"
    if isinstance(ref, IfExpr):
        return ",".join(_functions(a) for a in (ref.cond, ref.then, ref.else_))
    return ""


def _formatted_ref(path: str) -> Ref:
    found = _FORMATTED.get(path[len("=expr:") :])
    if found is None:
        raise ValueError(
            f"the expression {{{{{path}}}}} was formatted into a string in another process; "
            "build the workflow in the process that runs it"
        )
    return found


def if_expression(_if: Any, _then: Any, _else: Any) -> IfExpr:
    """A conditional value, as in Dflow: ``_then`` when ``_if`` holds, else ``_else``."""
    return IfExpr(_if, _then, _else)


class ItemRef(Ref):
    """The current fan-out item (``with_param`` / ``Slices``); ``item["a"]`` digs into it."""

    __slots__ = ("path",)

    def __init__(self, path: tuple[Any, ...] = ()) -> None:
        self.path = path

    def evaluate(self, scope: Scope) -> Any:
        value = scope.item_value()
        for part in self.path:
            value = value[part]
        return value

    def __getitem__(self, key: Any) -> ItemRef:  # type: ignore[override]
        return ItemRef((*self.path, key))

    def placeholder(self) -> str:
        return "{{" + ".".join(["item", *map(str, self.path)]) + "}}"


#: The fan-out item placeholder: ``Step(..., parameters={"x": item}, with_param=[...])``.
item = ItemRef()


def _leaves(value: Any) -> Iterator[Any]:
    """The leaves of a bound value: through lists, tuples, dicts and expressions' operands."""
    if isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, Expr):
        for a in value.args:
            yield from _leaves(a)
    elif isinstance(value, IfExpr):
        for a in (value.cond, value.then, value.else_):
            yield from _leaves(a)
    else:
        yield value


def iter_refs(value: Any) -> Iterator[Ref]:
    """Every leaf reference in a value (a reference, an expression, or a list/dict of them)."""
    for leaf in _leaves(value):
        if isinstance(leaf, Ref):
            yield from leaf.refs()


def evaluate(value: Any, scope: Scope) -> Any:
    """The run-time value of a bound input: references resolved, templates rendered."""
    if isinstance(value, Ref):
        return value.evaluate(scope)
    if isinstance(value, str):
        if "{{" in value:
            return render(value, scope)
        return value
    if isinstance(value, list):
        return [evaluate(v, scope) for v in value]
    if isinstance(value, tuple):
        return tuple(evaluate(v, scope) for v in value)
    if isinstance(value, dict):
        return {k: evaluate(v, scope) for k, v in value.items()}
    return value


_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


def placeholders(text: str) -> list[str]:
    """The placeholder paths in a template string: ``["inputs.parameters.iter", "item"]``
    (those of a formatted expression's references in its place)."""
    found = _PLACEHOLDER.findall(text)
    if not any(p.startswith("=expr:") for p in found):
        return found
    paths: list[str] = []
    for path in found:
        if path.startswith("=expr:"):
            for leaf in _formatted_ref(path).refs():
                paths += _PLACEHOLDER.findall(leaf.placeholder())
        else:
            paths.append(path)
    return paths


def placeholder_steps(text: str) -> list[str]:
    """Names of steps a template string refers to (``steps.X...`` or ``tasks.X...``)."""
    return path_steps(placeholders(text))


def path_steps(paths: Iterable[str]) -> list[str]:
    """Names of the steps placeholder paths refer to (``steps.X...`` or ``tasks.X...``)."""
    names = []
    for path in paths:
        parts = path.split(".")
        if parts[0] in ("steps", "tasks") and len(parts) >= 2:
            names.append(parts[1])
    return names


def placeholder_problem(path: str) -> str | None:
    """Why :func:`resolve_placeholder` could never resolve ``{{path}}`` (None: its shape is
    right; whether the step, input or output it names exists is another question)."""
    parts = path.split(".")
    head = parts[0]
    if path.startswith("=expr:") or head == "item":
        return None
    if head == "inputs" and len(parts) == 3 and parts[1] in ("parameters", "artifacts"):
        return None
    if (
        head in ("steps", "tasks")
        and len(parts) == 5
        and parts[2] == "outputs"
        and parts[3] in ("parameters", "artifacts")
    ):
        return None
    return (
        f"unknown placeholder {{{{{path}}}}} (placeholders are {{{{inputs.parameters.NAME}}}}, "
        "{{steps.STEP.outputs.parameters.NAME}}, artifacts likewise, and {{item}})"
    )


def resolve_placeholder(path: str, scope: Scope) -> Any:
    if path.startswith("=expr:"):
        return _formatted_ref(path).evaluate(scope)
    parts = path.split(".")
    head = parts[0]
    if head == "item":
        value = scope.item_value()
        for part in parts[1:]:
            value = value[int(part)] if isinstance(value, list | tuple) else value[part]
        return value
    if head == "inputs" and len(parts) == 3 and parts[1] in ("parameters", "artifacts"):
        return scope.input_value(parts[2], parts[1])
    if (
        head in ("steps", "tasks")
        and len(parts) == 5
        and parts[2] == "outputs"
        and parts[3] in ("parameters", "artifacts")
    ):
        return scope.output_value(parts[1], parts[4], parts[3])
    raise ValueError(f"unknown placeholder {{{{{path}}}}}")


def render(text: str, scope: Scope) -> Any:
    """Render a template string. A string that is exactly one placeholder yields the raw value
    (an int stays an int), as Dflow does when it parses parameters by their sign's type."""
    match = _PLACEHOLDER.fullmatch(text.strip())
    if match:
        return resolve_placeholder(match.group(1), scope)
    return _PLACEHOLDER.sub(lambda m: _as_text(resolve_placeholder(m.group(1), scope)), text)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    import json

    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def _truthy_string(text: str) -> bool:
    return text.strip().lower() not in ("", "false", "0", "none", "null")


def string_steps(value: Any) -> Iterator[str]:
    """Names of the steps that placeholders in a bound value's strings refer to."""
    for leaf in _leaves(value):
        if isinstance(leaf, str):
            yield from placeholder_steps(leaf)


def uses_item(value: Any) -> bool:
    """Whether a bound value depends on the fan-out item (so it is evaluated per slice)."""
    return scan(value)[2]


#: What validation asks of a bound value, found in one walk of it (see :func:`scan`): its
#: leaf references (in the order iter_refs() gives them), the placeholder paths in its strings
#: (in leaf order), and whether it depends on the fan-out item. A plain tuple: one is made per
#: bound value of every step, and a NamedTuple costs several times as much to build.
Scan = tuple[Sequence[Ref], Sequence[str], bool]

_NOTHING: Scan = ((), (), False)
_LEAF_REFS = Ref.refs


def scan(value: Any) -> Scan:
    """``(references, placeholder paths, uses item)`` of a bound value: what
    :func:`iter_refs`, :func:`string_steps` and :func:`uses_item` find, in one walk.

    Most bound values are a plain literal or one reference: those skip the generic walk,
    which costs microseconds per value and runs for every step of a workflow.
    """
    kind = type(value)
    if value is None or kind is int or kind is float or kind is bool:
        return _NOTHING
    if kind is str:
        return _scan_leaves((value,)) if "{{" in value else _NOTHING
    if isinstance(value, Ref) and kind.refs is _LEAF_REFS:
        # a leaf reference (refs() not overridden: not an expression) is its only reference
        return (value,), (), isinstance(value, ItemRef)
    return _scan_leaves(_leaves(value))


def _scan_leaves(leaves: Iterable[Any]) -> Scan:
    refs: list[Ref] = []
    paths: list[str] = []
    for leaf in leaves:
        if isinstance(leaf, Ref):
            refs.extend(leaf.refs())
        elif isinstance(leaf, str) and "{{" in leaf:  # no braces, no placeholder
            paths += placeholders(leaf)
    if not refs and not paths:
        return _NOTHING
    item = any(isinstance(r, ItemRef) for r in refs) or any(
        p.split(".")[0] == "item" for p in paths
    )
    return refs, paths, item


def safe_condition(text: str, scope: Scope) -> Any:
    """Evaluate a Dflow/Argo ``when`` string such as ``"{{steps.a.outputs.parameters.n}} < 3"``.

    Placeholders become bound names (never pasted-in source), the govaluate operators
    ``&& || !`` become Python's, and the result is computed by walking the AST with a short
    list of allowed nodes: comparisons, boolean and arithmetic operators, literals.
    """
    values: dict[str, Any] = {}

    def bind(path: str) -> str:
        name = f"_v{len(values)}"
        values[name] = resolve_placeholder(path, scope)
        return name

    return _eval_node(_condition_tree(text, bind), values, text)


def check_condition(text: str) -> str | None:
    """What :func:`safe_condition` would refuse in ``text`` whatever the values (it does not
    parse, or uses a construct it does not evaluate), found without evaluating it: validation
    reports it before any step runs. None: nothing."""
    names: set[str] = set()

    def bind(path: str) -> str:
        problem = placeholder_problem(path)
        if problem is not None:
            raise ValueError(f"condition {text!r} uses an {problem}")
        name = f"_v{len(names)}"
        names.add(name)
        return name

    try:
        _check_node(_condition_tree(text, bind), names, text)
    except ValueError as exc:
        return str(exc)
    return None


def _condition_tree(text: str, bind: Callable[[str], str]) -> Any:
    """The AST of a condition string, each placeholder replaced by the name ``bind`` gives
    for its path (in order)."""
    import ast

    source = _PLACEHOLDER.sub(lambda match: bind(match.group(1)), text)
    # Argo compares the text of parameters: a quoted placeholder ("{{x}}") stays a string
    source = re.sub(r"([\"'])(_v\d+)\1", r"str(\2)", source)
    source = source.replace("&&", " and ").replace("||", " or ")
    source = re.sub(r"!(?!=)", " not ", source)
    source = re.sub(r"\btrue\b", "True", source)
    source = re.sub(r"\bfalse\b", "False", source)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse condition {text!r}: {exc.msg}") from None
    return tree.body


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {}
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {}


def _init_ops() -> None:
    import ast

    _BINOPS.update(
        {
            ast.Add: operator.add,
            ast.Sub: operator.sub,
            ast.Mult: operator.mul,
            ast.Div: operator.truediv,
            ast.FloorDiv: operator.floordiv,
            ast.Mod: operator.mod,
        }
    )
    _CMPOPS.update(
        {
            ast.Lt: operator.lt,
            ast.LtE: operator.le,
            ast.Gt: operator.gt,
            ast.GtE: operator.ge,
            ast.Eq: _loose_eq,
            ast.NotEq: lambda a, b: not _loose_eq(a, b),
            ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b,
        }
    )


def _loose_eq(a: Any, b: Any) -> bool:
    # Argo compares parameters as text: "3" == 3 and "true" == True hold there
    if a == b:
        return True
    return _as_text(a).strip('"') == _as_text(b).strip('"') if type(a) is not type(b) else False


def _eval_node(node: Any, values: dict[str, Any], text: str) -> Any:
    import ast

    if not _BINOPS:
        _init_ops()
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in values:
            return values[node.id]
        if node.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.id]
    if isinstance(node, ast.BoolOp):
        results = (_eval_node(v, values, text) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        operand = _eval_node(node.operand, values, text)
        if isinstance(node.op, ast.Not):
            return not operand
        if isinstance(node.op, ast.USub):
            return -operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](
            _eval_node(node.left, values, text), _eval_node(node.right, values, text)
        )
    if isinstance(node, ast.Compare):
        left = _eval_node(node.left, values, text)
        for op_, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval_node(comp, values, text)
            if type(op_) not in _CMPOPS or not _CMPOPS[type(op_)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str":
        return _as_text(_eval_node(node.args[0], values, text))
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval_node(e, values, text) for e in node.elts]
    raise ValueError(f"condition {text!r} uses an unsupported construct ({type(node).__name__})")


def _check_node(node: Any, names: set[str], text: str) -> None:
    """:func:`_eval_node`'s refusals, without values: what it evaluates, it accepts."""
    import ast

    if not _BINOPS:
        _init_ops()
    children: list[Any]
    if isinstance(node, ast.Constant):
        return
    if isinstance(node, ast.Name):
        if node.id in names or node.id in ("True", "False", "None"):
            return
        raise ValueError(
            f"condition {text!r} uses the bare word {node.id!r}, neither a placeholder nor a "
            f"literal (quote a string: '{node.id}')"
        )
    if isinstance(node, ast.BoolOp):
        children = node.values
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        children = [node.operand]
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        children = [node.left, node.right]
    elif isinstance(node, ast.Compare):
        for op_ in node.ops:
            if type(op_) not in _CMPOPS:  # evaluated, it would be false whatever the values
                raise ValueError(
                    f"condition {text!r} uses an unsupported comparison ({type(op_).__name__}; "
                    "use == or !=)"
                )
        children = [node.left, *node.comparators]
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "str"
        and len(node.args) == 1
        and not node.keywords
    ):
        children = node.args
    elif isinstance(node, ast.List | ast.Tuple):
        children = node.elts
    else:
        what = type(getattr(node, "op", node)).__name__
        raise ValueError(f"condition {text!r} uses an unsupported construct ({what})")
    for child in children:
        _check_node(child, names, text)

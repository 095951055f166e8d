"""Bad workflows are rejected before any step runs, with every problem listed at once."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from dflow_async import (
    DAG,
    Artifact,
    InputParameter,
    Inputs,
    Slices,
    Step,
    Steps,
    Workflow,
    WorkflowValidationError,
    op,
)
from dflow_async.testing._ops import HoldsLock


@op
def needs(x: int, label: str) -> {"y": int}:  # type: ignore[valid-type]
    return {"y": x}


@op
def give_text() -> str:
    return "a"


@op
def takes_file(f: Artifact(Path)) -> int:  # type: ignore[valid-type]
    return 1


def problems(wf: Workflow, **kwargs) -> list[str]:
    with pytest.raises(WorkflowValidationError) as info:
        wf.run(**kwargs)
    return info.value.problems


@pytest.fixture(autouse=True)
def _tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_every_problem_is_reported_at_once_and_nothing_runs(tmp_path: Path) -> None:
    wf = Workflow("bad")
    a = Step("a", needs, parameters={"x": "seven", "lable": "typo"})
    b = Step("b", needs, parameters={"x": a.outputs.parameters["z"], "label": "ok"})
    wf.add(a)
    wf.add(b)
    found = problems(wf)
    text = "\n".join(found)
    assert "step bad.a: input 'x' expects int, got str" in text
    assert "binds parameter 'lable'" in text and "['label', 'x']" in text
    assert "required input parameter 'label' is not bound" in text
    assert "step 'a' has no output parameter 'z' (it has: ['y'])" in text
    assert len(found) == 4
    assert not (tmp_path / ".dflow-async" / "runs").exists()  # no run was even created


def test_cycle_names_the_steps() -> None:
    dag = DAG("loop")
    a = Step("a", needs, parameters={"x": 1, "label": "a"})
    b = Step("b", needs, parameters={"x": a.outputs.parameters["y"], "label": "b"})
    a.dependencies.append(b)
    dag.add([a, b])
    (problem,) = problems(Workflow("w", dag=dag))
    assert "DAG 'loop' has a cycle" in problem
    assert "a -> b -> a" in problem or "b -> a -> b" in problem


def test_type_mismatch_between_producer_and_consumer() -> None:
    dag = DAG("d")
    t = Step("t", give_text)
    n = Step("n", needs, parameters={"x": t.outputs.parameters["result"], "label": "l"})
    dag.add([t, n])
    (problem,) = problems(Workflow("w", dag=dag))
    assert "input 'x' expects int but step 't' output 'result' is str" in problem


def test_parameter_bound_as_artifact_and_unknown_reference() -> None:
    other = Step("elsewhere", give_text)
    wf = Workflow("w")
    wf.add(Step("f", takes_file, parameters={"f": "x.txt"}))
    wf.add(Step("g", needs, parameters={"x": 1, "label": other.outputs.parameters["result"]}))
    wf.add(Step("h", needs, parameters={"label": "l"}, artifacts={"x": Path("/tmp")}))
    found = problems(wf)
    assert any("'f' is an artifact port; bind it in artifacts=" in p for p in found)
    assert any("'x' is a parameter port; bind it in parameters=" in p for p in found)
    assert any("refers to step 'elsewhere', which is not a step of 'w'" in p for p in found)


def test_duplicate_names_and_same_group_reference() -> None:
    steps = Steps("s")
    a = Step("a", needs, parameters={"x": 1, "label": "a"})
    b = Step("b", needs, parameters={"x": a.outputs.parameters["y"], "label": "b"})
    steps.add([a, b])
    steps.add(Step("a", needs, parameters={"x": 1, "label": "again"}))
    found = problems(Workflow("w", steps=steps))
    assert any("two steps named 'a'" in p for p in found)
    assert any("uses step 'a', which runs in the same or a later group" in p for p in found)


def test_duplicate_literal_keys_across_templates_are_refused() -> None:
    inner = DAG("inner")
    inner.add(Step("c", needs, parameters={"x": 3, "label": "c"}, key="same"))
    steps = Steps("outer", inputs={"i": 0})
    steps.add(
        [
            Step("a", needs, parameters={"x": 1, "label": "a"}, key="same"),
            Step("b", needs, parameters={"x": 2, "label": "b"}, key="other"),
            Step("sub", inner),
            # rendered per execution: distinct by construction, never flagged
            Step(
                "d",
                needs,
                parameters={"x": 4, "label": "d"},
                key=f"k-{steps.inputs.parameters['i']}",
            ),
        ]
    )
    found = problems(Workflow("w", steps=steps))
    dupes = [p for p in found if "key 'same'" in p]
    assert len(dupes) == 1, found
    assert "step inner.c" in dupes[0] and "outer.a" in dupes[0]
    assert not any("'other'" in p or "k-" in p for p in found)


def test_duplicate_literal_keys_in_two_templates_of_one_name_are_refused() -> None:
    # two DAGs built by one function: the same name, the same step name, the same key
    def inner() -> DAG:
        dag = DAG("inner")
        dag.add(Step("c", needs, parameters={"x": 3, "label": "c"}, key="same"))
        return dag

    outer = DAG("outer")
    outer.add([Step("first", inner()), Step("second", inner())])
    found = problems(Workflow("w", dag=outer))
    assert len(found) == 1, found
    assert "step inner.c: key 'same' is also the key of inner.c" in found[0]


def test_unknown_executor_lists_installed_and_what_to_install() -> None:
    wf = Workflow("w", executor="ray")
    wf.add(Step("a", needs, parameters={"x": 1, "label": "a"}))
    (problem,) = problems(wf)
    assert "no executor named 'ray'" in problem
    assert "inline" in problem and "process" in problem
    assert "pip install dflow-async-ray" in problem


def test_unpicklable_op_on_process_executor_names_the_step() -> None:
    wf = Workflow("w", executor="process")
    wf.add(Step("locked", HoldsLock(), parameters={"x": 1}))
    (problem,) = problems(wf)
    assert "step w.locked" in problem and "cannot" in problem


def test_reference_to_another_templates_input() -> None:
    outer = Steps("outer", inputs={"n": 1})
    inner = Steps("inner", inputs=Inputs(parameters={"m": InputParameter()}))
    inner.add(Step("use", needs, parameters={"x": outer.inputs.parameters["n"], "label": "l"}))
    outer.add(Step("call", inner, parameters={"m": 2}))
    (problem,) = problems(Workflow("w", steps=outer))
    assert "refers to input 'n' of 'outer', but the step belongs to 'inner'" in problem


def test_slices_naming_unknown_ports_and_item_without_fan_out() -> None:
    from dflow_async import item

    wf = Workflow("w")
    wf.add(
        Step(
            "fan",
            needs,
            parameters={"x": [1, 2], "label": "l"},
            slices=Slices(input_parameter=["x", "nope"], output_parameter=["zz"]),
        )
    )
    wf.add(Step("single", needs, parameters={"x": item, "label": "l"}))
    found = "\n".join(problems(wf))
    assert "Slices names input 'nope'" in found
    assert "Slices names output 'zz'" in found
    assert "uses item but has neither with_param nor slices" in found


def test_entry_inputs_need_values_and_unknown_run_parameters() -> None:
    steps = Steps("main", inputs=Inputs(parameters={"n": InputParameter()}))
    steps.add(Step("a", needs, parameters={"x": steps.inputs.parameters["n"], "label": "l"}))
    wf = Workflow("w", steps=steps)
    assert any(
        "input 'n' has no value; give it a default (inputs={'n': ...}) or pass it to "
        "run(parameters=...)" in p
        for p in problems(wf)
    )
    assert any(
        "run(parameters=...) gives 'm'" in p for p in problems(wf, parameters={"n": 1, "m": 2})
    )
    result = wf.run(parameters={"n": 5})
    assert result.query_step(name="a")[0].outputs.parameters["y"] == 5


def test_references_have_no_truth_value() -> None:
    a = Step("a", needs, parameters={"x": 1, "label": "l"})
    with pytest.raises(TypeError, match=re.escape("combine conditions with & | ~")):
        if a.outputs.parameters["y"] > 1 and True:
            pass


@pytest.mark.parametrize("name", ["a/b", "x[0]", "{{item}}", "new\nline", ""])
def test_step_names_that_would_break_paths_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="Step name"):
        Step(name, needs, parameters={"x": 1, "label": "l"})


def test_a_cached_type_mismatch_is_reported_for_every_consumer() -> None:
    # is_compatible answers each (produced, consumed) pair once; every edge still reports
    dag = DAG("d")
    t = Step("t", give_text)
    dag.add(t)
    for name in ("n1", "n2"):
        dag.add(Step(name, needs, parameters={"x": t.outputs.parameters["result"], "label": "l"}))
    found = problems(Workflow("w", dag=dag))
    assert len(found) == 2, found
    assert all("expects int but step 't' output 'result' is str" in p for p in found)


def test_references_are_found_in_every_shape_of_bound_value() -> None:
    # validation walks each bound value once (fast paths for a literal and a lone reference):
    # references inside lists, dicts, expressions, placeholders and when/key are all checked
    from dflow_async import if_expression, item

    ghost = Step("ghost", needs, parameters={"x": 1, "label": "g"})
    dag = DAG("d")
    a = Step("a", needs, parameters={"x": 1, "label": "a"})
    y = a.outputs.parameters["y"]
    dag.add(a)
    dag.add(
        Step("in_list", needs, parameters={"x": 1, "label": [y, ghost.outputs.parameters["y"]]})
    )
    dag.add(Step("in_dict", needs, parameters={"x": y, "label": {"k": a.outputs.parameters["q"]}}))
    dag.add(Step("in_expr", needs, parameters={"x": if_expression(y > 1, y, 0) + 1, "label": "l"}))
    dag.add(
        Step("in_text", needs, parameters={"x": 1, "label": "{{steps.nope.outputs.parameters.y}}"})
    )
    dag.add(
        Step(
            "in_when",
            needs,
            parameters={"x": 1, "label": "l"},
            when=ghost.outputs.parameters["y"] > 0,
        )
    )
    dag.add(Step("item_text", needs, parameters={"x": 1, "label": "-{{item}}-"}))
    dag.add(Step("item_expr", needs, parameters={"x": item + 1, "label": "l"}))
    dag.add(Step("item_key", needs, parameters={"x": 1, "label": "l"}, key=f"k-{item}"))
    found = problems(Workflow("w", dag=dag))
    expected = [
        "step d.in_list: refers to step 'ghost', which is not a step of 'd'",
        "step d.in_dict: step 'a' has no output parameter 'q' (it has: ['y'])",
        "step d.in_text: placeholder refers to unknown step 'nope'",
        "step d.in_when: refers to step 'ghost', which is not a step of 'd'",
        "step d.item_text: uses item but has neither with_param nor slices",
        "step d.item_expr: uses item but has neither with_param nor slices",
        "step d.item_key: uses item but has neither with_param nor slices",
    ]
    assert [p.split(" (add it")[0] for p in found] == expected, found


def test_bindings_are_sorted_by_whether_they_use_the_item() -> None:
    from dflow_async import item

    dag = DAG("d")
    a = Step("a", needs, parameters={"x": 1, "label": "a"})
    y = a.outputs.parameters["y"]
    fan = Step(
        "fan",
        needs,
        parameters={"x": [y, item], "label": f"{y}"},
        with_param=[1, 2],
        key="k-{{item}}",
    )
    plain = Step("plain", needs, parameters={"x": y, "label": "{{steps.a.outputs.parameters.y}}"})
    dag.add([a, fan, plain])
    compiled = Workflow("w", dag=dag).validate()
    fan_node = compiled.nodes[compiled.by_name["fan"]]
    assert [b.port for b in fan_node.item_bindings] == ["x"]
    assert [b.port for b in fan_node.run_bindings] == ["label"]
    assert fan_node.key_per_item and fan_node.producers == {"a"}
    plain_node = compiled.nodes[compiled.by_name["plain"]]
    assert [b.port for b in plain_node.run_bindings] == ["x", "label"]
    assert not plain_node.item_bindings and plain_node.producers == {"a"}
    assert plain_node.const_inputs == {}


@op
def shout(s: str) -> str:
    return s.upper()


@op
def count(xs: list) -> int:  # type: ignore[type-arg]
    return len(xs)


@pytest.mark.parametrize("producers_first", [True, False], ids=["producers-first", "readers-first"])
def test_references_are_checked_whatever_order_the_steps_were_added(producers_first: bool) -> None:
    # a step is compiled in the order it was added; one that reads a step added after it is
    # checked once that step is compiled, with its output signs and whether it fans out
    t = Step("t", give_text)
    fan = Step(
        "fan",
        shout,
        parameters={"s": ["a", "b"]},
        slices=Slices(input_parameter=["s"], output_parameter=["result"]),
    )
    readers = [
        Step("typed", needs, parameters={"x": t.outputs.parameters["result"], "label": "l"}),
        Step("unknown", needs, parameters={"x": 1, "label": t.outputs.parameters["nope"]}),
        Step("kind", takes_file, artifacts={"f": t.outputs.artifacts["result"]}),
        # a fan-out's output is a list: fine for a list input (not str into list)
        Step("gather", count, parameters={"xs": fan.outputs.parameters["result"]}),
    ]
    dag = DAG("d")
    dag.add([t, fan, *readers] if producers_first else [*readers, t, fan])
    found = problems(Workflow("w", dag=dag))
    assert sorted(found) == [
        "step d.kind: step 't' has no output artifact 'result' (it has: none)",
        "step d.typed: input 'x' expects int but step 't' output 'result' is str",
        "step d.unknown: step 't' has no output parameter 'nope' (it has: ['result'])",
    ], found


def test_a_reference_to_a_later_step_of_an_inner_template_is_checked() -> None:
    # the checks kept for later belong to the template being compiled, not to the one whose
    # step uses it
    inner = DAG("inner")
    t = Step("t", give_text)
    inner.add([Step("n", needs, parameters={"x": t.outputs.parameters["result"], "label": "l"}), t])
    outer = DAG("outer")
    a = Step("a", give_text)
    m = Step("m", needs, parameters={"x": a.outputs.parameters["result"], "label": "l"})
    outer.add([m, Step("sub", inner), a])  # inner compiles while m's check waits for a
    found = problems(Workflow("w", dag=outer))
    assert sorted(found) == [
        "step inner.n: input 'x' expects int but step 't' output 'result' is str",
        "step outer.m: input 'x' expects int but step 'a' output 'result' is str",
    ], found


class Sized(typing.Protocol):  # not @runtime_checkable: neither isinstance nor issubclass work
    def size(self) -> int: ...


class Named(typing.Protocol):
    name: str


@typing.runtime_checkable
class HasName(typing.Protocol):  # runtime checkable, but a data member refuses issubclass
    name: str


class Box:
    name = "box"

    def size(self) -> int:
        return 1


@op
def make_sized() -> Sized:
    return Box()


@op
def make_box() -> Box:
    return Box()


@op
def use_sized(b: Sized) -> int:
    return b.size()


@op
def use_named(b: Named) -> str:
    return b.name


@op
def use_has_name(b: HasName) -> str:
    return b.name


def test_protocol_typed_ports_validate() -> None:
    dag = DAG("d")
    sized, box = Step("sized", make_sized), Step("box", make_box)
    dag.add([sized, box])
    dag.add(
        [
            # the same Protocol on both sides
            Step("same", use_sized, parameters={"b": sized.outputs.parameters["result"]}),
            # a class into a Protocol, or one Protocol into another: issubclass cannot tell,
            # so no mismatch can be proven
            Step("into", use_sized, parameters={"b": box.outputs.parameters["result"]}),
            Step("other", use_named, parameters={"b": sized.outputs.parameters["result"]}),
            Step("data", use_has_name, parameters={"b": box.outputs.parameters["result"]}),
            Step("literal", use_sized, parameters={"b": Box()}),
        ]
    )
    Workflow("w", dag=dag).validate()


def test_is_compatible_does_not_raise_for_protocols() -> None:
    from dflow_async._types import is_compatible

    assert is_compatible(Sized, Sized)
    assert is_compatible(Box, Sized) and is_compatible(Sized, Named)
    assert is_compatible(Box, HasName)
    assert not is_compatible(str, int)  # plain classes are still judged


@op
def read_file(f: Artifact(Path)) -> str:  # type: ignore[valid-type]
    return f.read_text()


def test_a_relative_local_artifact_path_is_relative_to_where_the_step_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the OP runs in its own work directory: a relative path would name nothing there
    (tmp_path / "input.txt").write_text("hello")
    step = Step("cat", read_file, artifacts={"f": Path("input.txt")})
    listed = Step("ls", takes_file, artifacts={"f": ["input.txt", "{{inputs.artifacts.x}}"]})
    assert step.artifacts["f"] == tmp_path / "input.txt"
    assert listed.artifacts["f"] == [str(tmp_path / "input.txt"), "{{inputs.artifacts.x}}"]
    url = Step("url", takes_file, artifacts={"f": ["s3://bucket/key"]})
    assert url.artifacts["f"] == ["s3://bucket/key"]  # a URL is no local path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # built in one directory, run from another
    wf = Workflow("w")
    wf.add(step)
    result = wf.run()
    assert result.query_step(name="cat")[0].outputs.parameters["result"] == "hello"


def test_a_missing_local_artifact_path_is_a_validation_problem(tmp_path: Path) -> None:
    (tmp_path / "here.txt").write_text("x")
    wf = Workflow("w")
    wf.add(Step("one", read_file, artifacts={"f": Path("/nonexistent/x.txt")}))
    wf.add(Step("many", takes_file, artifacts={"f": [Path("here.txt"), Path("gone.txt")]}))
    found = problems(wf)
    gone = str(tmp_path / "gone.txt")
    assert found == [
        "step w.one: artifact input 'f': local path '/nonexistent/x.txt' does not exist; "
        "create it before the run, or bind an existing file or directory",
        f"step w.many: artifact input 'f': local path {gone!r} does not exist; "
        "create it before the run, or bind an existing file or directory",
    ], found


class Point(typing.TypedDict):
    x: int


T = typing.TypeVar("T")


@pytest.mark.parametrize(
    ("produced", "consumed"),
    [
        (list[int], int),
        (int, list[int]),
        (list[int], list[str]),
        (typing.List[int], list[str]),  # noqa: UP006
        (typing.Sequence[int], list[str]),
        (tuple[int, ...], list[str]),
        (dict[str, int], list[int]),
        (dict[str, int], dict[str, str]),
        (list[list[int]], list[list[str]]),
        (typing.Annotated[list[int], "meta"], int),
        (list[int], Point),
    ],
)
def test_is_compatible_reports_sure_mismatches_of_generic_types(
    produced: typing.Any, consumed: typing.Any
) -> None:
    from dflow_async._types import is_compatible

    assert not is_compatible(produced, consumed)
    assert not is_compatible(produced, consumed)  # the cached answer too


@pytest.mark.parametrize(
    ("produced", "consumed"),
    [
        (typing.Any, list[int]),
        (list[int], typing.Any),
        (list[typing.Any], list[int]),
        (int | None, int),
        (typing.Optional[list[int]], int),  # noqa: UP045
        (list[int], list[int] | None),
        (list, list[int]),
        (list[int], list),
        (list[int], typing.Sequence[int]),
        (list[int], typing.Iterable[int]),
        (typing.Sequence[int], list[int]),
        (tuple[int, ...], list[int]),
        (tuple[int, str], list[int]),
        (list[int], list[float]),
        (list[str], list[Path]),
        (dict[str, typing.Any], Point),
        (Point, dict[str, typing.Any]),
        (int, float),
        (str, Path),
        (list[T], list[int]),  # type: ignore[valid-type]
        (T, list[int]),
        (typing.Annotated[int, "meta"], int),
        (list[typing.Annotated[int, "meta"]], list[int]),
        (typing.Literal[1, 2], int),
        (list[Box], list[Sized]),
        (list[int], "list[int]"),
    ],
)
def test_is_compatible_accepts_what_it_cannot_prove_wrong(
    produced: typing.Any, consumed: typing.Any
) -> None:
    from dflow_async._types import is_compatible

    assert is_compatible(produced, consumed)


@op
def make_ints() -> {"xs": list[int]}:  # type: ignore[valid-type]
    return {"xs": [1, 2]}


@op
def take_int(x: int) -> int:
    return x


@op
def take_str(x: str) -> str:
    return x


def test_generic_outputs_feeding_the_wrong_type_are_reported() -> None:
    from dflow_async import item

    dag = DAG("d", inputs={"ns": InputParameter(value=[1], type=list[int])})
    mk = Step("mk", make_ints)
    sliced = Step(
        "sl",
        take_int,
        parameters={"x": [1, 2]},
        slices=Slices(input_parameter=["x"], output_parameter=["result"]),
    )
    # a with_param over a step added later is checked once that step is compiled
    late = Step("late", take_str, parameters={"x": item}, with_param=mk.outputs.parameters["xs"])
    dag.add(late)
    dag.add([mk, sliced])
    dag.add(
        [
            Step("list", take_int, parameters={"x": mk.outputs.parameters["xs"]}),
            Step("stacked", take_int, parameters={"x": sliced.outputs.parameters["result"]}),
            Step("in", take_str, parameters={"x": item}, with_param=dag.inputs.parameters["ns"]),
            # fine: each item is an int, the stacked list a list of int
            Step("ok", take_int, parameters={"x": item}, with_param=mk.outputs.parameters["xs"]),
            Step(
                "ok2",
                take_int,
                parameters={"x": item},
                with_param=sliced.outputs.parameters["result"],
            ),
            Step(
                "ok3", take_str, parameters={"x": item["k"]}, with_param=mk.outputs.parameters["xs"]
            ),
        ]
    )
    found = problems(Workflow("w", dag=dag))
    assert sorted(found) == [
        "step d.in: input 'x' takes the item of with_param, whose elements are int (input 'ns' "
        "is list[int]), but it expects str",
        "step d.late: input 'x' takes the item of with_param, whose elements are int (step "
        "'mk' output 'xs' is list[int]), but it expects str",
        "step d.list: input 'x' expects int but step 'mk' output 'xs' is list[int]",
        "step d.stacked: input 'x' expects int but step 'sl' output 'result' is a list of int "
        "(one per slice: it fans out)",
    ], found


@op
def add(a: int, b: int) -> int:
    return a + b


def test_literal_slice_inputs_and_with_param_that_cannot_work_are_reported() -> None:
    from dflow_async import item

    def sliced(*ports: str) -> Slices:
        return Slices(input_parameter=list(ports), output_parameter=["result"])

    wf = Workflow("w")
    wf.add(
        [
            Step("scalar", add, parameters={"a": 5, "b": 1}, slices=sliced("a")),
            Step("lengths", add, parameters={"a": [1, 2, 3], "b": [1, 2]}, slices=sliced("a", "b")),
            Step("element", add, parameters={"a": [1, "x", "y"], "b": 1}, slices=sliced("a")),
            Step("number", add, parameters={"a": item, "b": 1}, with_param=5),
            Step("json", add, parameters={"a": item, "b": 1}, with_param="[1, oops"),
            Step("items", add, parameters={"a": item, "b": 1}, with_param=[1, 2.5]),
            # fine: a with_param gives the slice count (lists of other lengths are indexed),
            # an iterator is not used up by validation, a JSON string is a list
            Step(
                "indexed",
                add,
                parameters={"a": [1, 2, 3], "b": [1, 2]},
                slices=Slices(slices="{{item}}", input_parameter=["a", "b"]),
                with_param=[0, 1],
            ),
            Step("iterator", add, parameters={"a": item, "b": 1}, with_param=iter([1, 2])),
            Step("text", add, parameters={"a": item, "b": 1}, with_param="[1, 2]"),
        ]
    )
    found = problems(wf)
    assert sorted(found) == [
        "step w.element: sliced input 'a' takes elements of type int, but element 1 is str ('x')",
        "step w.items: input 'a' takes the item of with_param and expects int, but item 1 is "
        "float (2.5)",
        "step w.json: with_param is a string but not a JSON list: Expecting value: line 1 "
        "column 5 (char 4)",
        "step w.lengths: sliced inputs have different lengths ({'a': 3, 'b': 2}); each slice "
        "takes one element of every sliced input: bind lists of one length",
        "step w.number: with_param must be a list (or a reference to one) to fan out over, got "
        "int (5)",
        "step w.scalar: sliced input 'a' must be bound to a list (one element per slice), got "
        "int (5)",
    ], found


class Threshold:
    def __call__(self, inputs: dict[str, typing.Any]) -> bool:
        return bool(inputs["x"] > 0)


def test_a_when_callable_must_take_the_inputs_dict() -> None:
    wf = Workflow("w")
    wf.add(
        [
            Step("none", take_int, parameters={"x": 1}, when=lambda: True),
            Step("two", take_int, parameters={"x": 1}, when=lambda a, b: True),
            # fine: one argument, however it is spelled; a builtin cannot be inspected
            Step("one", take_int, parameters={"x": 1}, when=lambda inputs: inputs["x"] > 0),
            Step("star", take_int, parameters={"x": 1}, when=lambda *args: True),
            Step("instance", take_int, parameters={"x": 1}, when=Threshold()),
            Step("builtin", take_int, parameters={"x": 1}, when=bool),
        ]
    )
    found = problems(wf)
    assert found == [
        "step w.none: when= callable must take one argument (a dict of the step's inputs), "
        "but test_a_when_callable_must_take_the_inputs_dict.<locals>.<lambda>() does not; "
        "e.g. when=lambda inputs: inputs['x'] > 0",
        "step w.two: when= callable must take one argument (a dict of the step's inputs), "
        "but test_a_when_callable_must_take_the_inputs_dict.<locals>.<lambda>(a, b) does "
        "not; e.g. when=lambda inputs: inputs['x'] > 0",
    ], found


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("continue_on_success_ratio", 1.5),
        ("continue_on_success_ratio", -0.1),
        ("continue_on_success_ratio", float("nan")),
        ("continue_on_success_ratio", "0.5"),
        ("continue_on_num_success", -1),
        ("continue_on_num_success", 1.5),
        ("continue_on_num_success", True),
    ],
)
def test_out_of_range_tolerance_options_are_refused(option: str, value: typing.Any) -> None:
    with pytest.raises(ValueError, match=f"Step 'fan': {option} must be"):
        Step("fan", take_int, parameters={"x": [1, 2]}, **{option: value})


def test_tolerance_options_at_their_bounds_are_accepted() -> None:
    for ratio in (0, 0.0, 0.5, 1, 1.0):
        assert Step("s", take_int, continue_on_success_ratio=ratio).tolerates_failure
    assert Step("s", take_int, continue_on_num_success=0).tolerates_failure


@op
def write_number(x: int) -> {"f": Artifact(Path)}:  # type: ignore[valid-type]
    Path("n.txt").write_text(str(x))
    return {"f": Path("n.txt")}


def test_template_outputs_assigned_plain_references_are_wrapped() -> None:
    from dflow_async import OutputArtifact, OutputParameter

    sub = Steps("sub", inputs={"x": 1})
    s = Step("s", needs, parameters={"x": sub.inputs.parameters["x"], "label": "l"})
    w = Step("w", write_number, parameters={"x": sub.inputs.parameters["x"]})
    sub.add([s, w])
    # assigned after construction, as Outputs(parameters={...}) is given them
    sub.outputs.parameters["y"] = s.outputs.parameters["y"]
    sub.outputs.artifacts["f"] = w.outputs.artifacts["f"]
    sub.outputs.parameters.update(z=s.outputs.parameters["y"])
    assert isinstance(sub.outputs.parameters["y"], OutputParameter)
    assert isinstance(sub.outputs.parameters["z"], OutputParameter)
    assert isinstance(sub.outputs.artifacts["f"], OutputArtifact)
    top = Steps("top")
    t = Step("t", sub, parameters={"x": 3})
    top.add(t)
    top.add(Step("u", read_file, artifacts={"f": t.outputs.artifacts["f"]}))
    top.add(Step("v", needs, parameters={"x": t.outputs.parameters["z"], "label": "l"}))
    result = Workflow("w", steps=top).run()
    assert result.query_step(name="t")[0].outputs.parameters == {"y": 3, "z": 3}
    assert result.query_step(name="u")[0].outputs.parameters["result"] == "3"
    # a table replaced whole is wrapped as well
    sub.outputs.parameters = {"y": s.outputs.parameters["y"]}
    assert isinstance(sub.outputs.parameters["y"], OutputParameter)


@op
def plus1(x: int = 1) -> {"iter": int}:  # type: ignore[valid-type]
    return {"iter": x + 1}


def test_a_literal_key_in_a_template_that_runs_more_than_once_is_refused() -> None:
    from dflow_async import item

    def keyed(name: str, key: str, inputs: dict[str, typing.Any] | None = None) -> Steps:
        steps = Steps(name, inputs=inputs)
        steps.add(Step("s", plus1, key=key))
        return steps

    twice = keyed("twice", "k-twice", {"x": 1})
    sliced = keyed("sliced", "k-sliced", {"x": 1})
    inner = keyed("inner", "k-inner")  # used once, but by a template used twice
    outer = Steps("outer", inputs={"x": 1})
    outer.add(Step("in", inner))
    once = keyed("once", "k-once")
    loop = Steps("loop", inputs={"iter": 0})
    p = Step("p", plus1, parameters={"x": loop.inputs.parameters["iter"]}, key="k-loop")
    # rendered per run: distinct by construction, never judged
    r = Step("r", plus1, key=f"r-{loop.inputs.parameters['iter']}")
    loop.add([p, r])
    loop.add(
        Step(
            "next",
            loop,
            parameters={"iter": p.outputs.parameters["iter"]},
            when=p.outputs.parameters["iter"] < 3,
        )
    )
    main = DAG("main")
    main.add(
        [
            Step("a", twice, parameters={"x": 1}),
            Step("b", twice, parameters={"x": 2}),
            Step("c", sliced, parameters={"x": item}, with_param=[1, 2]),
            Step("d", outer),
            Step("e", outer),
            Step("f", once),
            Step("g", loop),
        ]
    )
    found = problems(Workflow("w", dag=main))
    more = "which runs more than once"
    assert sorted(found) == [
        f"step inner.s: key 'k-inner' is the same for every run of template 'inner', {more} "
        f"(runs inside 'outer', {more}): embed an input in the key, e.g. give 'inner' an "
        "input that tells its runs apart and embed it",
        f"step loop.p: key 'k-loop' is the same for every run of template 'loop', {more} "
        "(calls itself): embed an input in the key, e.g. "
        "key=f\"k-loop-{loop.inputs.parameters['iter']}\"",
        f"step sliced.s: key 'k-sliced' is the same for every run of template 'sliced', {more} "
        "(is sliced by step main.c): embed an input in the key, e.g. "
        "key=f\"k-sliced-{sliced.inputs.parameters['x']}\"",
        f"step twice.s: key 'k-twice' is the same for every run of template 'twice', {more} "
        "(used by steps main.a and main.b): embed an input in the key, e.g. "
        "key=f\"k-twice-{twice.inputs.parameters['x']}\"",
    ], found


def test_slices_refuses_a_misspelled_keyword_and_suggests_the_right_one() -> None:
    # with pool_sise= a fan-out used to run with no limit, silently
    with pytest.raises(TypeError, match=r"'pool_sise'; did you mean 'pool_size'\?"):
        Slices(input_parameter=["x"], pool_sise=1)
    with pytest.raises(TypeError, match=r"'input_parameters'; did you mean 'input_parameter'"):
        Slices(input_parameters=["x"])


def test_a_when_string_is_parsed_before_any_step_runs() -> None:
    a = "{{steps.a.outputs.parameters.result}}"
    fine = {  # each evaluated as it would be when its step's turn comes
        "lt": (f"{a} < 3 && !false", True),
        "quoted": (f"'{a}' == '1'", True),
        "member": (f"{a} in [2, 3]", False),
        "arith": (f"-{a} * 2 + 1 == -1 || {a} % 2 == 0", True),
        "literal": ("true", True),
    }
    bad = {
        "syntax": f"{a} <<< 3",
        "power": f"{a} ** 2 > 3",
        "word": f"{a} == heads",
        "identity": f"{a} is 1",
        "shape": "{{steps.a.outputs.result}} == 1",
        "call": f"len({a}) > 0",
    }

    def build(conditions: dict[str, typing.Any]) -> Workflow:
        wf = Workflow("w")
        wf.add(Step("a", take_int, parameters={"x": 1}))
        wf.add([Step(n, take_int, parameters={"x": 2}, when=c) for n, c in conditions.items()])
        return wf

    found = problems(build({**{n: c for n, (c, _) in fine.items()}, **bad, "int": 3}))
    assert found == [
        f"step w.syntax: when= cannot parse condition '{a} <<< 3': invalid syntax; a condition "
        'compares placeholders and literals, e.g. "{{steps.a.outputs.parameters.n}} < 3 && '
        "'{{inputs.parameters.mode}}' == 'fast'\"",
        f"step w.power: when= condition '{a} ** 2 > 3' uses an unsupported construct (Pow)",
        f"step w.word: when= condition '{a} == heads' uses the bare word 'heads', neither a "
        "placeholder nor a literal (quote a string: 'heads')",
        f"step w.identity: when= condition '{a} is 1' uses an unsupported comparison (Is; use "
        "== or !=)",
        "step w.shape: when= condition '{{steps.a.outputs.result}} == 1' uses an unknown "
        "placeholder {{steps.a.outputs.result}} (placeholders are {{inputs.parameters.NAME}}, "
        "{{steps.STEP.outputs.parameters.NAME}}, artifacts likewise, and {{item}})",
        f"step w.call: when= condition 'len({a}) > 0' uses an unsupported construct (Call)",
        "step w.int: when= must be a condition (references compared: a.outputs.parameters['n'] "
        "< 3), a condition string, a callable taking the step's inputs, or a bool; got int (3)",
    ], found
    result = build({n: c for n, (c, _) in fine.items()}).run().raise_for_status()
    ran = {r.name: r.phase == "Succeeded" for r in result.records if r.name != "a"}
    assert ran == {n: runs for n, (_, runs) in fine.items()}


def test_placeholders_must_name_outputs_their_step_has() -> None:
    # as a reference must: at run time an undeclared output reads as not produced, and the
    # step that reads it was skipped without a word
    dag = DAG("d")
    late = Step("late", needs, parameters={"x": 1, "label": "z"})  # added after its readers
    a = Step("a", needs, parameters={"x": 1, "label": "a"})
    a_y = a.outputs.parameters["y"]
    dag.add(a)
    dag.add(Step("param", needs, parameters={"x": 1, "label": "{{steps.a.outputs.parameters.q}}"}))
    dag.add(Step("key", needs, parameters={"x": 1, "label": "l"}, key="k-%s" % a_y))
    dag.add(
        Step(
            "badkey",
            needs,
            parameters={"x": 1, "label": "l"},
            key="k-{{tasks.a.outputs.parameters.z}}",
        )
    )
    dag.add(
        Step(
            "when",
            needs,
            parameters={"x": 1, "label": "l"},
            when="{{steps.a.outputs.artifacts.y}} > 0",
        )
    )
    dag.add(Step("expr", needs, parameters={"x": 1, "label": f"n-{a.outputs.parameters['w'] + 1}"}))
    dag.add(
        Step("later", needs, parameters={"x": 1, "label": "{{steps.late.outputs.parameters.v}}"})
    )
    dag.add(
        Step("fine", needs, parameters={"x": 1, "label": "{{steps.late.outputs.parameters.y}}"})
    )
    dag.add(late)
    found = problems(Workflow("w", dag=dag))
    assert found == [
        "step d.param: placeholder {{steps.a.outputs.parameters.q}}: step 'a' has no output "
        "parameter 'q' (it has: ['y'])",
        "step d.badkey: placeholder {{tasks.a.outputs.parameters.z}}: step 'a' has no output "
        "parameter 'z' (it has: ['y'])",
        "step d.when: placeholder {{steps.a.outputs.artifacts.y}}: step 'a' has no output "
        "artifact 'y' (it has: none)",
        "step d.expr: placeholder {{steps.a.outputs.parameters.w}}: step 'a' has no output "
        "parameter 'w' (it has: ['y'])",
        "step d.later: placeholder {{steps.late.outputs.parameters.v}}: step 'late' has no "
        "output parameter 'v' (it has: ['y'])",
    ], found


def test_input_placeholders_must_name_inputs_of_the_steps_template() -> None:
    # In Dflow (and Argo) {{inputs.parameters.x}} in a step's key or arguments is an input of
    # the template holding the step. One naming the step's own parameter instead read as not
    # produced at run time, and the step was skipped without a word.
    def build(slips: bool) -> Workflow:
        inner = Steps("inner", inputs={"iter": 0})
        iter_ = inner.inputs.parameters["iter"]
        inner.add(Step("fstring", needs, parameters={"x": iter_, "label": "l"}, key=f"i-{iter_}"))
        label = "n-{{inputs.parameters.iter}}"
        inner.add(Step("text", needs, parameters={"x": 1, "label": label}))
        outer = DAG("outer")
        outer.add(Step("sub", inner, parameters={"iter": 3}))
        if slips:
            label = "{{inputs.artifacts.iter}}"
            inner.add(Step("wrongkind", needs, parameters={"x": 1, "label": label}))
            label = "{{inputs.parameters.label}}"
            inner.add(Step("own", needs, parameters={"x": 1, "label": label}))
            key = "top-{{inputs.parameters.x}}"
            outer.add(Step("top", needs, parameters={"x": 2, "label": "l"}, key=key))
        return Workflow("w", dag=outer)

    found = problems(build(slips=True))
    hint = (
        "; a step's placeholders see the inputs of the template holding it (as in Dflow), "
        "not the step's own parameters: embed what the parameter is bound to instead, e.g. "
        "key=f\"run-{other.outputs.parameters['x']}\""
    )
    assert found == [
        "step inner.wrongkind: placeholder {{inputs.artifacts.iter}} names input artifact "
        f"'iter' of template 'inner', which declares none such (it has: none){hint}",
        "step inner.own: placeholder {{inputs.parameters.label}} names input parameter "
        f"'label' of template 'inner', which declares none such (it has: ['iter']){hint}",
        "step outer.top: placeholder {{inputs.parameters.x}} names input parameter 'x' of "
        f"template 'outer', which declares none such (it has: none){hint}",
    ], found
    # what is declared still runs, and renders the template's input
    result = build(slips=False).run(journal=False).raise_for_status()
    assert result.query_step(name="fstring")[0].key == "i-3"
    assert result.query_step(name="text")[0].outputs.parameters["y"] == 1


@op
def leaves_a_mark(marker: str) -> int:
    Path(marker).write_text("ran")
    return 1


def test_validation_creates_nothing_and_a_run_still_checks_its_store_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate() (and `dflow-async graph`) made ./.dflow-async/artifacts/... though it is
    documented to write nothing."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    wf = Workflow("w")
    wf.add(Step("mark", leaves_a_mark, parameters={"marker": str(marker)}))
    wf.validate()
    Workflow("w", steps=wf.entrypoint, store=str(tmp_path / "elsewhere")).validate()
    assert list(tmp_path.iterdir()) == []
    # a store that cannot be made: validation does not look, a run fails before any step
    (tmp_path / "file").write_text("")
    blocked = Workflow("w", steps=wf.entrypoint, store=str(tmp_path / "file" / "store"))
    blocked.validate()
    with pytest.raises(WorkflowValidationError, match="store: "):
        blocked.run()
    assert not marker.exists()
    assert wf.run().status == "Succeeded" and marker.exists()

"""core.workspace, core.hardware and the generic job-spec machinery."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from core.hardware import detect
from core.runs.spec import check_limits, meta, spec_fields, spec_from_dict, spec_to_yaml
from core.workspace import atomic_write_dir, atomic_write_json, read_json, safe_name


@dataclass
class DemoSpec:
    kind: ClassVar[str] = "demo"
    rate: float = field(default=1e-4, metadata=meta("learning rate", min=0.0, max=1.0))
    steps: int = field(default=10, metadata=meta("steps", min=1))
    mode: str = field(default="a", metadata=meta("mode", "extra", advanced=True, choices={"a": "first", "b": "second"}))
    targets: list = field(default_factory=lambda: ["q_proj"], metadata=meta("targets"))
    flag: bool = False


def test_spec_fields_describe_the_form():
    infos = {f.name: f for f in spec_fields(DemoSpec)}
    assert infos["rate"].type == "float" and infos["rate"].help == "learning rate" and infos["rate"].max == 1.0
    assert infos["mode"].choices == ("a", "b") and infos["mode"].group == "extra" and infos["mode"].advanced
    assert infos["targets"].type == "list" and infos["targets"].default == ["q_proj"]
    assert infos["flag"].type == "bool"


def test_spec_roundtrip_with_coercion():
    import yaml

    spec = spec_from_dict(DemoSpec, {"rate": "2e-4", "steps": 5.0, "targets": "q_proj, v_proj", "flag": "true"})
    assert spec == DemoSpec(rate=2e-4, steps=5, targets=["q_proj", "v_proj"], flag=True)
    data = yaml.safe_load(spec_to_yaml(spec))
    assert data["kind"] == "demo"
    assert spec_from_dict(DemoSpec, data) == spec


def test_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown field.*bogus"):
        spec_from_dict(DemoSpec, {"bogus": 1})
    with pytest.raises(ValueError, match="steps: expected int"):
        spec_from_dict(DemoSpec, {"steps": 2.5})
    with pytest.raises(ValueError, match="rate: 5.0 is above the maximum"):
        check_limits(DemoSpec(rate=5.0))
    with pytest.raises(ValueError, match="mode: 'c' is not one of"):
        check_limits(DemoSpec(mode="c"))


def test_field_metadata_comes_from_the_one_helper():
    with pytest.raises(ValueError, match="help text"):
        meta(" ")

    @dataclass
    class Typo:
        steps: int = field(default=1, metadata={"help": "steps", "mni": 1})

    with pytest.raises(TypeError, match="Typo.steps: unknown metadata mni"):
        spec_fields(Typo)


def test_every_job_spec_declares_its_fields_with_meta_and_registry_choices():
    import dataclasses
    import typing

    from core.data.masking import POLICIES
    from core.merge.methods import METHODS as MERGE_METHODS
    from core.prune.methods import MODES, TARGETS
    from core.runs.jobs import JOBS
    from core.train import backends
    from core.train.spec import BACKENDS

    for job in JOBS.values():
        cls = job.spec_class()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
            assert typing.get_origin(hints[f.name]) is not typing.Literal, (f"{cls.__name__}.{f.name}: choices belong in "
                                                                            "meta(choices=registry)")
    choices = lambda cls: {i.name: i.choices for i in spec_fields(cls)}  # noqa: E731
    assert choices(JOBS["merge"].spec_class())["method"] == tuple(MERGE_METHODS)
    assert choices(JOBS["prune"].spec_class())["mode"] == MODES
    assert choices(JOBS["prune"].spec_class())["target"] == tuple(TARGETS)
    assert choices(JOBS["distill"].spec_class())["policy"] == POLICIES == choices(JOBS["train"].spec_class())["masking_policy"]
    assert BACKENDS == ("auto",) + tuple(b.name for b in backends.BACKENDS)


def test_safe_name_blocks_paths():
    assert safe_name("../../etc/passwd") == "etc-passwd"
    assert safe_name("my run: v2!") == "my-run-v2"
    assert safe_name("...") == "unnamed"


def test_atomic_json_leaves_no_temp_files(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert read_json(target) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_native_bf16_is_read_from_the_cpu_flags():
    from core.hardware import cpu_has_native_bf16

    assert cpu_has_native_bf16("processor : 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_native_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("flags : fpu sse2 avx2 avx512f\n")  # avx512 alone emulates bf16


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "adapter"
    atomic_write_dir(target, lambda tmp: (tmp / "a.txt").write_text("old"))

    def half_written(tmp):
        (tmp / "a.txt").write_text("new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_dir(target, half_written)
    assert (target / "a.txt").read_text() == "old"  # the old folder was never deleted first
    atomic_write_dir(target, lambda tmp: (tmp / "b.txt").write_text("new"))
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary or retired folders left


def test_hardware_detect_on_this_machine():
    hw = detect()
    assert hw.device in ("cpu", "cuda", "mps")
    assert hw.cpu_cores >= 1
    if hw.device == "cpu":
        from core.hardware import cpu_has_native_bf16

        assert not hw.unsloth and hw.bf16 == cpu_has_native_bf16()
    assert hw.summary.startswith(hw.device.upper())


# ---------------------------------------------------------------- test hygiene


def test_our_own_deprecation_warnings_are_not_hidden():
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # keeps the filters pytest.ini installed
        warnings.warn_explicit("old API", DeprecationWarning, "core/fake.py", 1, module="core.fake")
        warnings.warn_explicit("their old API", DeprecationWarning, "somelib/x.py", 1, module="somelib.x")
    assert [str(w.message) for w in caught] == ["old API"]


def test_every_test_has_a_timeout(request):
    assert request.config.pluginmanager.hasplugin("timeout") and float(request.config.getini("timeout")) > 0


def test_no_skip_hides_an_import_error_of_our_own_code():
    """A `pytest.importorskip` of one of our own modules would turn its broken import into a skip."""
    import re
    from pathlib import Path

    ours = r"importorskip\(\s*['\"](core|pages_common|app_pages|bench|tools)\b"
    offenders = [p.name for p in Path(__file__).parent.rglob("*.py") if re.search(ours, p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_a_model_source_names_its_base_the_way_other_tools_do(tmp_path):
    from core.models import EMBEDDED_HUB_ID, ModelSource

    assert ModelSource().hub_name == EMBEDDED_HUB_ID
    assert ModelSource("hub", "Qwen/Qwen2.5-0.5B-Instruct").hub_name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert ModelSource("local", str(tmp_path / "m")).hub_name == str(tmp_path / "m")
    assert ModelSource("local", "~/m").hub_name.endswith("/m") and "~" not in ModelSource("local", "~/m").hub_name

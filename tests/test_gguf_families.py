"""Our GGUF converter vs llama.cpp's own, on the model families users bring (tests/families.py: tiny random
weights, the family's real tokenizer and chat template; SentencePiece families both as their repositories ship them,
with tokenizer.model, and as transformers 5 re-saves them, tokenizer.json only).

For every family we convert: the same tensors (names, shapes, ggml types, bytes) and the same metadata (every key
and value, the vocabulary, scores, types, merges, special ids, add_bos / add_eos, pre-tokenizer, chat template,
hyper-parameters) as llama.cpp's convert_hf_to_gguf.py at F16 and Q8_0, but for the keys in NAMING_KEYS; then our F16
file in llama.cpp generates torch's greedy text (the export's own check, core.export.validate). An architecture we
do not convert is refused by name before an export merges anything.

llama.cpp's conversions are made once per cache (families.reference_gguf); the first run takes minutes.
"""
from __future__ import annotations

import json
from pathlib import Path

import families
import pytest
from inprocess import run_in_process

from core.export import gguf_convert, validate

pytestmark = pytest.mark.slow

CONVERTED = ("llama2-spm", "mistral", "llama3", "qwen2.5", "qwen3", "phi3")
SENTENCEPIECE = ("llama2-spm", "mistral", "phi3")  # shipped with tokenizer.model beside tokenizer.json
# Keys that name the file rather than describe the model; every other key must be equal.
NAMING_KEYS = {
    "general.name": "ours is the export's name (run / folder), llama.cpp's is derived from the folder name",
    "general.size_label": "llama.cpp's label from the parameter count (e.g. '8B'), a naming convention we do not write",
}
GREEDY_TOKENS = 8


def _read(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> (shape, ggml type, bytes)) of a GGUF file, through the export's own header
    reader (gguf.GGUFReader takes ~8 s per 150k-token vocabulary on a busy CPU; test_fast_reader_reads_what_gguf_reads
    holds the reader to it)."""
    import gguf

    from core.export.gguf_header import read_header

    header = read_header(path)
    raw = Path(path).read_bytes()  # tiny models: a few MB
    meta = {k: v for k, v in header.metadata.items()}
    tensors = {t.name: (t.shape, gguf.GGMLQuantizationType(t.ggml_type).name, raw[t.offset: t.offset + t.nbytes]) for t in header.tensors}
    return meta, tensors


def _read_with_gguf(path: Path) -> tuple[dict, dict]:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    meta = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = {t.name: (tuple(int(x) for x in reversed(t.shape)), t.tensor_type.name, np.asarray(t.data).tobytes()) for t in reader.tensors}
    return meta, tensors


VOCAB_LISTS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def _differences(ours: Path, reference: Path, *, padded_from: int | None = None) -> list[str]:
    """Every way the two files differ (empty when equal), keys of NAMING_KEYS aside. `padded_from`: llama.cpp's
    vocabulary stops at that many tokens where ours goes on with [PAD<id>] rows up to the embedding's rows (the
    test that passes it says why); the tokens before it must be equal, the rest must be padding."""
    ours_meta, ours_tensors = _read(ours)
    ref_meta, ref_tensors = _read(reference)
    if padded_from is not None:
        pads = ours_meta["tokenizer.ggml.tokens"][padded_from:]
        assert pads and pads == [f"[PAD{i}]" for i in range(padded_from, padded_from + len(pads))], pads[:3]
        assert set(ours_meta["tokenizer.ggml.token_type"][padded_from:]) == {5}  # UNUSED
        assert len(ref_meta["tokenizer.ggml.tokens"]) == padded_from
        for key in VOCAB_LISTS:
            ours_meta[key] = ours_meta[key][:padded_from]
    found = [f"tensor {name} only in ours" for name in sorted(set(ours_tensors) - set(ref_tensors))]
    found += [f"tensor {name} only in llama.cpp's" for name in sorted(set(ref_tensors) - set(ours_tensors))]
    for name in sorted(set(ours_tensors) & set(ref_tensors)):
        (shape, kind, data), (ref_shape, ref_kind, ref_data) = ours_tensors[name], ref_tensors[name]
        if (shape, kind) != (ref_shape, ref_kind):
            found.append(f"tensor {name}: ours {shape} {kind}, llama.cpp's {ref_shape} {ref_kind}")
        elif data != ref_data:
            found.append(f"tensor {name}: same shape and type, different bytes")
    keys = (set(ours_meta) | set(ref_meta)) - set(NAMING_KEYS)
    for key in sorted(keys):
        if key not in ours_meta or key not in ref_meta:
            found.append(f"key {key} only in {'ours' if key in ours_meta else 'llama.cpp' + chr(39) + 's'}")
        elif ours_meta[key] != ref_meta[key]:
            a, b = ours_meta[key], ref_meta[key]
            if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                found.append(f"key {key}: {sum(x != y for x, y in zip(a, b))} entries differ, first [{first}] {a[first]!r} vs {b[first]!r}")
            else:
                found.append(f"key {key}: ours {str(a)[:80]!r}, llama.cpp's {str(b)[:80]!r}")
    return found


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Our F16 and Q8_0 file of each family (made lazily, once per module), sharing the family's vocabulary as the
    export job does (so the comparison with llama.cpp holds the shared path to it)."""
    root = tmp_path_factory.mktemp("ours")
    made: dict[tuple[str, str], Path] = {}
    vocabularies: dict[str, gguf_convert.Vocabulary] = {}

    def get(name: str, outtype: str) -> Path:
        if (name, outtype) not in made:
            folder = families.family_model_dir(name)
            if name not in vocabularies:
                vocabularies[name] = gguf_convert.read_vocabulary(folder)
            made[name, outtype] = gguf_convert.convert(folder, root / f"{name}-{outtype}.gguf", outtype, vocabulary=vocabularies[name]).path
        return made[name, outtype]

    return get


# Q8_0 is the same quantiser whatever the family: compared on one SentencePiece and one BPE family (each reference
# conversion costs 20-60 s on a cold cache); F16 on every family.
@pytest.mark.parametrize("name, outtype", [(name, "f16") for name in CONVERTED] + [("llama2-spm", "q8_0"), ("qwen3", "q8_0")])
def test_ours_equals_llama_cpp_tensor_for_tensor_and_key_for_key(name, outtype, converted):
    reference = families.reference_gguf(name, outtype)
    ours = converted(name, outtype)
    assert _differences(ours, reference) == []
    meta, tensors = _read(ours)
    assert meta["tokenizer.ggml.tokens"] and meta["tokenizer.chat_template"] == families.template_text(families.family(name))
    assert meta["tokenizer.ggml.model"] == ("llama" if name in SENTENCEPIECE else "gpt2")
    expected = "F16" if outtype == "f16" else "Q8_0"
    assert tensors["blk.0.ffn_down.weight"][1] == expected  # the comparison above did see the requested type


def test_fast_reader_reads_what_gguf_reads(converted):
    for outtype in ("f16", "q8_0"):
        path = converted("mistral", outtype)
        assert _read(path) == _read_with_gguf(path)


def test_the_comparison_sees_a_wrong_tensor_and_a_wrong_key(monkeypatch, tmp_path):
    """What the test above asserts empty is not empty for a converter that skips the q/k permutation and stores
    another chat template."""
    monkeypatch.setattr(gguf_convert, "permute_qk", lambda weights, n_head, n_head_kv=None: weights)
    broken = gguf_convert.convert(families.family_model_dir("mistral"), tmp_path / "broken.gguf", "f16",
                                  chat_template="{{ messages }}").path
    found = _differences(broken, families.reference_gguf("mistral", "f16"))
    wrong_tensors = {f"tensor blk.{i}.attn_{qk}.weight: same shape and type, different bytes" for i in (0, 1) for qk in "qk"}
    assert set(found) == wrong_tensors | {"key tokenizer.chat_template: ours '{{ messages }}', llama.cpp's " + repr(
        families.template_text(families.family("mistral"))[:80])}, found


@pytest.mark.parametrize("name", CONVERTED)
def test_our_f16_generates_torch_greedy_text_in_llama_cpp(name, converted):
    from core.models import ModelSource, load_model

    _llama_cpp()
    model_dir = families.family_model_dir(name)
    loaded = load_model(ModelSource("local", str(model_dir)), device="cpu", dtype="float32")
    template = families.template_text(families.family(name))
    prompts = validate.validation_prompts(loaded.tokenizer, template, None, 2)
    references = validate.torch_references(loaded.model, loaded.tokenizer, prompts, GREEDY_TOKENS)
    checks = {c["name"]: c for c in validate.gguf_checks(converted(name, "f16"), references, loaded.tokenizer, template,
                                                         quantized=False, min_agreement=None)}
    for check in ("loads in llama.cpp", "greedy text vs torch", "chat template stored"):  # greedy: on torch's very ids
        assert checks[check]["passed"], checks[check]
    if name not in SENTENCEPIECE:
        # SentencePiece families: transformers' fast tokenizer (converted from tokenizer.model) splits the text after a
        # special token differently from SentencePiece itself, which llama.cpp follows (test_families.py checks that)
        assert checks["tokenizer matches"]["passed"], checks["tokenizer matches"]
    assert sum(len(r["continuation"]) for r in references) >= GREEDY_TOKENS  # torch did generate text to compare


def test_phi3_long_rope_equals_llama_cpp(tmp_path):
    """Phi-3-128k's rope scaling: rope_factors_long / _short tensors and the attention factor, as llama.cpp writes them."""
    model_dir = families.longrope_dir("phi3")
    ours = gguf_convert.convert(model_dir, tmp_path / "ours.gguf", "f16")
    assert _differences(ours.path, families.reference_gguf_of(model_dir, "f16")) == []
    meta, tensors = _read(ours.path)
    assert {"rope_factors_long.weight", "rope_factors_short.weight"} <= set(tensors) and meta["phi3.rope.scaling.attn_factor"] > 1


def _tiny_gemma2(target: Path) -> Path:
    """A real (loadable, mergeable) Gemma-2 folder: the architecture our converter does not write."""
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(families.family_model_dir("llama2-spm"))
    torch.manual_seed(0)
    config = Gemma2Config(**{**families.TINY, **families.family("gemma").traits, "vocab_size": len(tokenizer),
                             "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": 0})
    Gemma2ForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def test_an_unconverted_architecture_is_refused_by_name_before_the_merge(workspace, tmp_path):
    from core.export.spec import ExportSpec

    model_dir = _tiny_gemma2(tmp_path / "gemma2")
    with pytest.raises(gguf_convert.ConversionError, match="Gemma2ForCausalLM"):
        gguf_convert.preflight(json.loads((model_dir / "config.json").read_text()))
    spec = ExportSpec(model={"kind": "local", "ref": str(model_dir)}, formats=["merged", "gguf_f16"])
    run_dir, status = run_in_process(spec)
    assert status.state == "failed" and "Gemma2ForCausalLM" in status.error and "GGUF" in status.error, status.error
    assert not (run_dir / "export").exists() and not (run_dir / ".work").exists()  # nothing merged, nothing written
    assert not (run_dir / "memory_plan.json").exists()  # refused before the disk and memory plans, let alone the merge


def test_the_sentencepiece_model_is_kept_beside_a_resaved_tokenizer(tmp_path):
    source, target = tmp_path / "source", tmp_path / "merged"
    source.mkdir()
    target.mkdir()
    (source / "tokenizer.model").write_bytes(b"spm-bytes")
    assert gguf_convert.keep_sentencepiece_model(target, None, tmp_path / "adapter-without-it", source)
    assert (target / "tokenizer.model").read_bytes() == b"spm-bytes" and not list(target.glob(".*partial"))
    assert not gguf_convert.keep_sentencepiece_model(target, source)  # already there: left as it is


@pytest.mark.parametrize("name", SENTENCEPIECE)
def test_without_tokenizer_model_ours_equals_llama_cpp(name, tmp_path):
    """A SentencePiece model re-saved by transformers 5 (tokenizer.json only, no tokenizer.model): both converters read
    the SentencePiece-style BPE of tokenizer.json (llama.cpp's Phi-3 class needs its Llama fallback for it, see
    families.reference_convert)."""
    model_dir = families.tokenizer_json_only_dir(name)
    ours = gguf_convert.convert(model_dir, tmp_path / "ours.gguf", "f16")
    assert ours.tokenizer == "llama (tokenizer.json, byte fallback)"
    reference = families.reference_gguf(name, "f16", tokenizer_json_only=True)
    padded_from = None
    if name == "phi3":
        # Phi-3's tokenizer has 32,011 ids for 32,064 embedding rows; llama.cpp's tokenizer.json path writes 32,011 tokens
        # and llama.cpp then refuses its own file (one token per row); ours pads with [PAD<id>] as its SentencePiece path does
        tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
        padded_from = 1 + max([*tokenizer_json["model"]["vocab"].values(), *(t["id"] for t in tokenizer_json["added_tokens"])])
        with pytest.raises(ValueError, match="could not load"), _llama_cpp().open_gguf(reference):
            pass
    assert _differences(ours.path, reference, padded_from=padded_from) == []
    if _llama_cpp().available():
        with _llama_cpp().open_gguf(ours.path) as llm:
            assert llm.n_vocab() == json.loads((model_dir / "config.json").read_text())["vocab_size"]


def _llama_cpp():
    from core import llamacpp

    if not llamacpp.available():
        pytest.skip(llamacpp.missing_note())
    return llamacpp

"""Real architectures at their own init (tests/corpus.py): no warning or error unless it is
listed here with the plain fact behind it; and every fault planted in them is found."""

import pytest
import torch
from corpus import CORPUS, FAULTS, HARMED_AT_OWN_INIT, vit_zero_patch_embedding

from initaudit import audit
from initaudit.core.options import SEVERITIES
from initaudit.fixing.fixer import repair
from initaudit.rules.registry import load_rules

_UNUSED = ("a parameter the model's own forward never lets reach this loss (a pooler under the "
           "masked-LM head, a mask token used only with bool_masked_pos, ESM's contact head): it "
           "really gets no gradient, and the optimizer never updates it")
_ZERO_GRADIENT = ("measured: these parameters' first-step gradient is exactly zero on the small "
                  "test configuration (attention over a single token at the last stage gives "
                  "query and key none; squeeze-excite and attention biases likewise); a fact of "
                  "the tiny test images, not traced further")

_MOBILEVIT = ("measured, and harmful: transformers 5's MobileViT _init_weights draws every "
              "BatchNorm gain from N(0, 0.02), so the signal shrinks at each normalization (from "
              "5e-3 to 2e-7 over the first stages); trained on a 4-class task it stays at 26-55% "
              "accuracy where the same model with gains 1 reaches 66-97% and after --fix 92-99% "
              "(benchmarks/fix_norm_gains.py)")

# name -> {code: the fact that makes it a finding}
KNOWN = {
    "hf-squeezebert": {"IA301": _UNUSED},
    "hf-esm": {"IA301": _UNUSED},
    "hf-big-bird": {"IA301": _UNUSED},
    "hf-dinov2": {"IA301": _UNUSED},
    "hf-mobilevit": {"IA302": _ZERO_GRADIENT, "IA202": _MOBILEVIT},
    "hf-mobilevitv2": {"IA202": _MOBILEVIT},
    "hf-levit": {"IA302": _ZERO_GRADIENT},
    "hf-cvt": {"IA302": _ZERO_GRADIENT},
    "hf-swiftformer": {"IA302": _ZERO_GRADIENT},
}


def test_the_corpus_is_large_enough():
    hf = [name for name in CORPUS if name.startswith("hf-")]
    assert len(hf) >= 40 and any(name.startswith("peft-") for name in CORPUS)
    assert set(KNOWN) <= set(CORPUS)


# the models whose findings --fix acts on: those harmed at their own init (the rest come out
# of it bit-identical)
CHANGED_BY_FIX = HARMED_AT_OWN_INIT


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_a_known_good_model_gets_no_warning_and_fix_leaves_it_alone(name):
    model, example = CORPUS[name]()
    report = audit(model, example)
    flagged = {f.code for f in report.findings if f.severity in ("warning", "error")}
    details = [f"{f.code} {f.location}: {f.message}" for f in report.findings if f.severity != "info"]
    assert flagged == set(KNOWN.get(name, {})), details
    # the fix acts on warnings and errors only: the recipes reported as info keep every bit
    before = {k: v.clone() for k, v in model.state_dict().items()}
    repair(model, report, example)
    changed = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))
    assert bool(changed) == (name in CHANGED_BY_FIX), changed[:10]


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_a_fault_planted_in_a_real_model_is_found(name):
    model, example, code, where = FAULTS[name]()
    report = audit(model, example)
    # found at its rule's default severity at least (IA501 is information by default)
    floor = SEVERITIES.index(load_rules()[code].severity)
    assert any(f.code == code and where in f.location and SEVERITIES.index(f.severity) >= floor
               for f in report.findings), [(f.code, f.severity, f.location) for f in report.findings]


def test_a_zero_layer_that_moves_at_the_first_step_is_information():
    """A zero patch embedding cuts the image off at init, but its own gradient is not zero: it
    moves at step 1 and trains (the benchmark's ViT with zero embeddings trains)."""
    model, example, code, where = vit_zero_patch_embedding()
    report = audit(model, example)
    (zero,) = [f for f in report.findings if f.code == code and where in f.location]
    assert zero.severity == "info" and "moves at step 1" in zero.message
    assert not [f for f in report.findings if f.severity in ("warning", "error")]


def test_a_hugging_face_models_own_init_is_named_as_such():
    model, example = CORPUS["hf-bert"]()
    report = audit(model, example)
    assert report.recording.declared_init_std == 0.02
    notes = [f for f in report.findings if f.code == "IA201"]
    assert notes and all(f.severity == "info" for f in notes)
    assert any("the model's own `_init_weights`" in f.message for f in notes)


def test_a_model_without_its_own_init_declares_none():
    model, example = CORPUS["torch-transformer-encoder"]()
    assert audit(model, example).recording.declared_init_std is None

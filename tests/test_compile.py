"""run.compile: validated like every option, falls back to eager in one line, and a compiled
agent computes what the eager one does up to float rounding."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch._dynamo.utils import counters

from reverie.agents.imagine import ImagineAgent
from reverie.cli import main
from reverie.compiler import Compiler
from reverie.config import build_config
from reverie.errors import UserError
from reverie.run.driver import Trainer
from test_imagine_agent import OBS_SPEC, SPACES, FakeReplay, tiny_config
from tiny import TINY_MODEL

TINY = [*TINY_MODEL, "imagine.world.backbone_kwargs={}", "run.train_ratio=16",
        "run.prefill=100", "run.checkpoint_every=100", "run.log_every=50", "run.eval_every=1000",
        "run.eval_episodes=0", "run.progress=false", "run.threads=1"]
NOTE = "reverie: note: run.compile=on fell back to eager"


@pytest.fixture(autouse=True)
def dynamo_enabled():
    """conftest turns torch.compile off for the suite; these tests are about it."""
    with torch._dynamo.config.patch(disable=False):
        yield


@pytest.mark.parametrize("value,mode", [("on", "on"), ("off", "off"), ("true", "on"),
                                        ("False", "off"), ("ON", "on"), ("Auto", "auto")])
def test_compile_config_takes_off_auto_on_and_yaml_booleans(value, mode):
    assert build_config("cartpole").run.compile == "auto"
    assert build_config("cartpole", [f"run.compile={value}"]).run.compile == mode


def test_compile_config_typo_is_one_line_with_a_suggestion(capsys):
    with pytest.raises(UserError, match=r"run.compile must be off, auto or on, got 'onn' "
                                        r"\(did you mean 'on'\?\)"):
        build_config("cartpole", ["run.compile=onn"])
    assert main(["train", "--set", "run.compile=of"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'off'" in err


def metrics_of(out, extra: list[str]) -> str:
    cfg = build_config("cartpole", TINY + extra, {"backbone": "mamba2", "steps": 160})
    Trainer(cfg, out).train()
    return (out / "metrics.jsonl").read_text()


@pytest.fixture(scope="module")
def eager_metrics(tmp_path_factory) -> str:
    return metrics_of(tmp_path_factory.mktemp("off") / "run", ["run.compile=off"])


def test_compile_fallback_when_torch_compile_raises(eager_metrics, tmp_path, capsys,
                                                    monkeypatch):
    """torch.compile unavailable: one note, and the run is the compile-off run exactly."""
    def unavailable(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python\nsecond line")

    monkeypatch.setattr(torch, "compile", unavailable)
    on = metrics_of(tmp_path / "on", ["run.compile=on"])
    err = capsys.readouterr().err
    assert err.count(NOTE) == 1
    assert f"{NOTE} (RuntimeError: Dynamo is not supported on this Python)\n" in err
    assert on == eager_metrics


def test_compile_fallback_when_the_first_call_fails(eager_metrics, tmp_path, capsys,
                                                    monkeypatch):
    """Compiling fails inside the first update, after random numbers were drawn: they are
    drawn again eagerly from the same state, so the run still equals the compile-off run."""
    calls = []

    def failing_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(fn.__name__)
            torch.rand(3)  # what a partly run graph may have consumed
            raise RuntimeError("CppCompileError: no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    on = metrics_of(tmp_path / "on", ["run.compile=on"])
    err = capsys.readouterr().err
    assert err.count(NOTE) == 1
    assert f"{NOTE} (RuntimeError: CppCompileError: no C++ compiler)\n" in err
    assert calls == ["loss_terms"]  # tried once, then eager for good
    assert any("wm/loss" in json.loads(row) for row in on.splitlines())
    assert on == eager_metrics


def test_compiling_is_announced_once_and_not_under_torch_compile_disable(monkeypatch):
    """The first compiled call says why the first update is slow, once per run; with torch's
    TORCH_COMPILE_DISABLE (nothing is compiled) it says nothing."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    notes: list[str] = []
    compiler = Compiler(notes.append, "auto")
    inc, dec = compiler.wrap(lambda x: x + 1), compiler.wrap(lambda x: x - 1)
    assert notes == []  # wrapping alone compiles nothing
    assert (inc(1), dec(1), inc(2)) == (2, 0, 3)
    assert len(notes) == 1 and notes[0].startswith("note: run.compile=auto compiles at the "
                                                   "first update")
    quiet: list[str] = []
    with torch._dynamo.config.patch(disable=True):
        assert Compiler(quiet.append, "on").wrap(lambda x: x * 2)(4) == 8
    assert quiet == []


def test_compile_note_for_an_agent_with_nothing_to_compile(tmp_path, capsys):
    cfg = build_config("random", ["run.compile=on", "run.progress=false",
                                  "run.eval_episodes=0"], {"steps": 50})
    Trainer(cfg, tmp_path / "run").train()
    err = capsys.readouterr().err
    assert "reverie: note: run.compile: agent random has nothing to compile" in err


@pytest.mark.parametrize("backbone,step", [("mamba2", True), ("mamba1", True),
                                           ("transformer", True), ("gru", False),
                                           ("ffm", False)])
def test_auto_compiles_only_the_imagined_step_of_the_measured_backbones(backbone, step):
    """run.compile=auto: the imagined step of a backbone in AUTO_COMPILE_STEP, nothing else
    (the world-model loss and the actor-critic stay eager); other backbones: nothing."""
    cfg = tiny_config()
    cfg.world.backbone = backbone
    cfg.world.backbone_kwargs = {"head_dim": 16} if backbone == "mamba2" else {}
    agent = ImagineAgent(OBS_SPEC, SPACES["discrete"], cfg, torch.device("cpu"), 0)
    behavior = agent.behavior
    agent.compile(Compiler(print, "auto"))
    assert (agent._imagined_step is not None) == step
    assert agent._world_loss is None
    assert behavior._losses == behavior.losses and behavior._targets == behavior.targets


def test_auto_is_silent_for_an_agent_with_nothing_to_compile(tmp_path, capsys):
    cfg = build_config("random", ["run.progress=false", "run.eval_episodes=0"], {"steps": 50})
    assert cfg.run.compile == "auto"
    Trainer(cfg, tmp_path / "run").train()
    assert "compile" not in capsys.readouterr().err


@pytest.mark.compile
def test_compiled_agent_matches_eager_within_float_rounding(request, monkeypatch):
    """The one real compile of the suite: the world-model loss, the imagined step (mamba2's
    `step`) and the actor-critic losses, with inductor. Same seed, data and random draws:
    three updates agree with eager to 1e-4 (compiled kernels round differently; README,
    "Compiled kernels"). Its inductor cache lives in .pytest_cache: the first run compiles
    (2-4 min on 2 busy cores), later runs load the kernels (~15 s)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(request.config.cache.mkdir("inductor")))
    cfg = tiny_config()
    cfg.world.backbone, cfg.world.backbone_kwargs = "mamba2", {"head_dim": 16}
    runs, graphs = {}, counters["stats"]["unique_graphs"]
    for mode in ("off", "on"):
        torch.manual_seed(0)
        agent = ImagineAgent(OBS_SPEC, SPACES["discrete"], cfg, torch.device("cpu"), 0)
        notes: list[str] = []
        if mode == "on":
            agent.compile(Compiler(notes.append))
        replay = FakeReplay(SPACES["discrete"])
        runs[mode] = [agent.update(replay) for _ in range(3)]
        # compiling says so once, at the first update, and nothing fell back
        assert len(notes) == (mode == "on") and all("compiles at the first update: up to "
                                                    "~2 min" in n for n in notes), notes
    assert counters["stats"]["unique_graphs"] >= graphs + 4  # it did compile
    for eager, compiled in zip(runs["off"], runs["on"]):
        assert eager.keys() == compiled.keys()
        for k in eager:
            assert math.isclose(eager[k], compiled[k], rel_tol=1e-4, abs_tol=1e-4), k


def test_the_inductor_cache_is_reverie_s_unless_the_user_chose_one(tmp_path, monkeypatch):
    """Importing torch._dynamo sets TORCHINDUCTOR_CACHE_DIR to torch's /tmp default before
    any run compiles; that one is replaced by ~/.cache/reverie/inductor (README, "Cache"),
    a folder the user set is kept, even when it is torch's default."""
    import reverie
    from reverie.compiler import _torch_default_cache_dir, use_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ours = str(tmp_path / "reverie" / "inductor")
    monkeypatch.setattr(reverie, "_INDUCTOR_CACHE_CHOSEN", False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", _torch_default_cache_dir())
    assert use_cache_dir() == ours
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert use_cache_dir() == ours
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_cache_dir() == str(tmp_path / "mine")
    monkeypatch.setattr(reverie, "_INDUCTOR_CACHE_CHOSEN", True)  # set before reverie's import
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", _torch_default_cache_dir())
    assert use_cache_dir() == _torch_default_cache_dir()

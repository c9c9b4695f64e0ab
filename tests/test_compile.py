"""run.compile: validated like every option, falls back to eager in one line, and a compiled
agent computes what the eager one does up to float rounding."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from reverie import compiler as compiler_module
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
    """Compiling fails at the first compiled call (acting's, after the prefill), after random
    numbers were drawn: they are drawn again eagerly from the same state, so the run still
    equals the compile-off run."""
    calls = []

    def failing_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(fn.__name__)
            torch.rand(3)  # what a partly run graph may have consumed
            raise RuntimeError("CppCompileError: no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    # a C++ compile error while trusting the CPU's vector ISA, where the probes pick another
    # one: compiled once more with that, then eager for good (the probes and the marker of
    # the real function are the subject of the tests below)
    monkeypatch.setattr(compiler_module, "_picked_isa", lambda trusting: str(trusting))
    monkeypatch.setattr(compiler_module, "_trust_failed", False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    on = metrics_of(tmp_path / "on", ["run.compile=on"])
    err = capsys.readouterr().err
    assert err.count(NOTE) == 1
    assert f"{NOTE} (RuntimeError: CppCompileError: no C++ compiler)\n" in err
    assert calls == ["_act_step", "_act_step"]
    assert any("wm/loss" in json.loads(row) for row in on.splitlines())
    assert on == eager_metrics


@pytest.fixture
def isa_world(monkeypatch, tmp_path):
    """A fake torch.compile whose compiled calls succeed or raise as told, probes that pick
    another ISA than the CPU's flags name, and this test's own cache folder and trust."""
    calls: list[dict] = []
    fail: list[str | None] = [None]

    def fake_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(kwargs["options"])
            if fail[0] is not None:
                error = RuntimeError(fail[0])
                if "ImportError: " in fail[0]:  # as inductor raises a load failure
                    error.__cause__ = ImportError(fail[0].split("ImportError: ", 1)[1])
                raise error
            return fn(*args, **kw)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(compiler_module, "_picked_isa",
                        lambda trusting: "avx512" if trusting else "avx2")
    monkeypatch.setattr(compiler_module, "_trust_failed", False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    (tmp_path / "inductor").mkdir()
    return calls, fail, tmp_path / "inductor" / compiler_module.ISA_MARKER


def test_an_error_of_the_caller_s_own_propagates_and_compiling_stays_on(isa_world):
    """A unit that raises eagerly too (a caller's bad input) propagates its error, says
    nothing and leaves compiling and the kernels on; the next good call runs compiled."""
    calls, _, _ = isa_world
    notes: list[str] = []
    c = Compiler(notes.append, "on")
    kernel: list[bool] = []
    c.build(lambda: None, "a kernel", "the torch ops run", kernel.append)

    def unit(x):
        if x < 0:
            raise ValueError("x must be >= 0")
        return f(x)

    f = c.wrap(lambda x: x + 1)
    with pytest.raises(ValueError, match="x must be >= 0"):
        c.run(unit, -1)
    assert not c.eager and kernel == [True, False, True] and c.reason is None
    assert not [n for n in notes if "fell back" in n]
    assert c.run(unit, 1) == 2 and not c.eager and calls  # compiled


def test_kernels_that_fail_for_one_reason_share_one_note(isa_world):
    """No C++ compiler fails every kernel alike: one note per reason, said when the agent's
    builds are done (`say_unbuilt`) or, at the latest, at a wrapped function's first call."""
    def broken(reason):
        def load():
            raise RuntimeError(reason)
        return load

    notes: list[str] = []
    c = Compiler(notes.append, "on")
    for what, reason in (("kernel A", "no C++ compiler"), ("kernel B", "disk full"),
                         ("kernel C", "no C++ compiler"), ("kernel D", "no C++ compiler")):
        assert not c.build(broken(reason), what, f"{what}'s torch ops run", lambda on: None)
    assert not [n for n in notes if "not built" in n]
    assert c.wrap(lambda x: x + 1)(1) == 2
    assert [n for n in notes if "not built" in n] == [
        "note: run.compile=on: kernel A, kernel C and kernel D were not built (RuntimeError: "
        "no C++ compiler); the torch ops run in their place",
        "note: run.compile=on: kernel B was not built (RuntimeError: disk full); kernel B's "
        "torch ops run instead"]
    c.say_unbuilt()
    assert len([n for n in notes if "not built" in n]) == 2  # said once


def test_only_an_isa_failure_before_any_compiled_call_compiles_again(isa_world):
    """An op inductor cannot lower goes eager at once (a second compile would fail alike);
    a C++ compile error or a library that does not load, while the trusted ISA has not yet
    worked, is compiled again with the probes' ISA, once; after a compiled call has
    returned, the ISA is proven and a C++ error is not its fault."""
    calls, fail, marker = isa_world
    T, O = compiler_module.TRUSTING, compiler_module.OPTIONS
    for message, tries in (("LoweringException: no lowering for aten.foo", [T]),
                           ("BackendCompilerFailed: CppCompileError: C++ compile error", [T, O]),
                           ("InductorError: ImportError: /c/x.so: undefined symbol: Sleef_x",
                            [T, O])):
        calls.clear()
        fail[0] = message
        notes: list[str] = []
        compiler_module._trust_failed = False
        marker.unlink(missing_ok=True)
        c = Compiler(notes.append, "on")
        f = c.wrap(lambda x: x + 1)
        assert c.run(f, 1) == 2 and c.eager
        assert calls == tries, message
        assert notes[-1] == f"note: run.compile=on fell back to eager (RuntimeError: {message})"
    # proven: a compiled call returned, then a C++ error (a recompile for a new shape)
    calls.clear()
    compiler_module._trust_failed = False
    marker.unlink()
    c = Compiler(lambda n: None, "on")
    f = c.wrap(lambda x: x + 1)
    fail[0] = None
    assert c.run(f, 1) == 2 and not c.eager and c.trust_proven
    fail[0] = "CppCompileError: C++ compile error"
    assert c.run(f, 1) == 2 and c.eager
    assert calls == [T, T] and not marker.exists()


def test_a_failed_trust_is_remembered_and_a_retry_that_works_stays_compiled(isa_world):
    calls, fail, marker = isa_world
    fail[0] = "CppCompileError: C++ compile error"
    c = Compiler(lambda n: None, "on")
    f = c.wrap(lambda x: x * 3)

    def unit(x):  # the first (trusted) compile fails, the retry's works
        out = f(x)
        return out

    real = torch.compile
    first = [True]

    def once(fn, **kwargs):
        compiled = real(fn, **kwargs)

        def call(*a, **k):
            if first[0]:
                first[0] = False
                return compiled(*a, **k)
            fail[0] = None
            return compiled(*a, **k)
        return call

    c._compiled[0][2] = once(c._compiled[0][0], options=c.options)
    torch.compile = once  # the retry compiles through it too
    try:
        assert c.run(unit, 2) == 6 and not c.eager and c.options == compiler_module.OPTIONS
    finally:
        torch.compile = real
    assert compiler_module._trust_failed
    assert json.loads(marker.read_text()) == {"torch": torch.__version__, "trusted": "avx512",
                                              "probed": "avx2"}
    # a later Compiler of this process, or of another process with this torch, probes
    assert Compiler(lambda n: None, "on").options == compiler_module.OPTIONS
    compiler_module._trust_failed = False
    assert Compiler(lambda n: None, "on").options == compiler_module.OPTIONS  # the marker
    marker.write_text(json.dumps({"torch": "0.0.1"}))  # another torch: trust again
    assert Compiler(lambda n: None, "on").options is compiler_module.TRUSTING


def test_probes_that_pick_the_trusted_isa_leave_it_and_go_eager(isa_world, monkeypatch):
    calls, fail, marker = isa_world
    monkeypatch.setattr(compiler_module, "_picked_isa", lambda trusting: "avx2")
    fail[0] = "CppCompileError: C++ compile error"
    c = Compiler(lambda n: None, "on")
    f = c.wrap(lambda x: x + 1)
    assert c.run(f, 1) == 2 and c.eager
    assert calls == [compiler_module.TRUSTING]  # not compiled again for the same ISA
    assert not marker.exists() and not compiler_module._trust_failed


def test_probes_that_raise_leave_the_run_eager_with_the_first_reason(isa_world, monkeypatch):
    calls, fail, marker = isa_world

    def broken(trusting):
        raise AttributeError("inductor moved pick_vec_isa")

    monkeypatch.setattr(compiler_module, "_picked_isa", broken)
    fail[0] = "CppCompileError: C++ compile error"
    notes: list[str] = []
    c = Compiler(notes.append, "on")
    f = c.wrap(lambda x: x + 1)
    assert c.run(f, 1) == 2 and c.eager and not marker.exists()
    assert notes[-1] == ("note: run.compile=on fell back to eager (RuntimeError: "
                         "CppCompileError: C++ compile error)")


def test_a_users_own_vec_isa_setting_is_kept(isa_world):
    """TORCHINDUCTOR_VEC_ISA_OK=0 (inductor's switch for no vectorisation) or any value the
    user gave inductor's config: reverie does not trust over it."""
    import torch._inductor.config as inductor_config

    for value in (False, True):  # (monkeypatch's undo would delete the config entry)
        with inductor_config.patch({"cpp.vec_isa_ok": value}):
            assert Compiler(lambda n: None, "on").options == compiler_module.OPTIONS
    assert Compiler(lambda n: None, "on").options is compiler_module.TRUSTING


FAKE_CXX = """#!/bin/sh
# a g++ that cannot build AVX-512 or AMX code; queries (--version, -v) and the rest go to g++
for a in "$@"; do
  case "$a" in -mavx512*|-mamx*) echo "fake: no $a" >&2; exit 1;; esac
done
exec g++ "$@"
"""

RETRY = """
import json, torch
import torch._inductor.config as ic
# the CPU's flags name AVX-512 (whatever this machine has), its compiler cannot build it
torch.cpu._is_avx512_supported = lambda: True
torch.cpu._is_vnni_supported = lambda: False
torch.cpu._is_amx_tile_supported = lambda: False
from torch._inductor.cpu_vec_isa import pick_vec_isa
from reverie.compiler import OPTIONS, TRUSTING, Compiler
notes = []
c = Compiler(notes.append, "on")
trusting = c.options is TRUSTING
if {only_trust}:
    print(json.dumps({{"trusting": trusting}}))
    raise SystemExit(0)
f = c.wrap(lambda x: (x.sin() * 2).exp())
x = torch.randn(64)
built = []
with ic.patch({{"cpp.cxx": (None, "{cxx}")}}):
    if {kernel}:  # one of reverie's kernels first, as an agent's set-up builds them
        from reverie.nets import categorical_kernel
        built.append(c.build(categorical_kernel.load, "the kernel", "torch runs", print))
    y = c.run(f, x)
    isa = str(pick_vec_isa())
print(json.dumps({{"notes": notes, "eager": c.eager, "trusting": trusting,
                  "probed": c.options == OPTIONS, "isa": isa, "built": built,
                  "close": torch.allclose(y, (x.sin() * 2).exp())}}))
"""


@pytest.mark.compile
def test_a_cpp_compile_error_while_trusting_the_isa_compiles_again_with_the_probes(tmp_path):
    """reverie trusts the CPU's flags for the vector ISA (fewer probe libraries: seconds of
    every first compile); a compiler that cannot build that ISA fails the first compile, and
    the unit is compiled once more with the ISA inductor's probes pick: still compiled, no
    note, and the next process probes from the start. The same for one of reverie's kernels
    built first. A fresh process and inductor cache
    (~10 s), a fake g++ in front of the real one, the CPU's flags naming AVX-512."""
    import platform

    if shutil.which("g++") is None or platform.machine() not in ("x86_64", "AMD64") \
            or not torch.cpu._is_avx2_supported():
        pytest.skip("needs g++ and an x86 CPU with AVX2")
    cxx = tmp_path / "g++"
    cxx.write_text(FAKE_CXX)
    cxx.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCH_COMPILE_DISABLE", "TORCHINDUCTOR_VEC_ISA_OK")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")

    def child(only_trust: bool = False, kernel: bool = False) -> dict:
        script = RETRY.format(cxx=cxx, only_trust=only_trust, kernel=kernel)
        out = subprocess.run([sys.executable, "-c", script], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.splitlines()[-1])

    got = child()
    assert got["trusting"] and got["probed"] and not got["eager"] and got["close"], got
    assert got["isa"] == "avx2", got
    assert len(got["notes"]) == 1 and "compiles as training starts" in got["notes"][0]
    marker = json.loads((tmp_path / "inductor" / compiler_module.ISA_MARKER).read_text())
    assert (marker["trusted"], marker["probed"]) == ("avx512", "avx2")
    assert not child(only_trust=True)["trusting"]  # the marker: no trusted compile to fail
    # a kernel's build fails first: it probes, builds with AVX2, and the compile after it
    # compiles with the probed ISA straight away (a fresh cache: no marker)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor2")
    got = child(kernel=True)
    assert got["built"] == [True] and got["trusting"] and got["probed"], got
    assert got["isa"] == "avx2" and not got["eager"] and got["close"], got
    assert not [n for n in got["notes"] if "not built" in n], got


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
    assert agent._world_loss is None and agent._observe is None
    assert behavior._losses == behavior.losses and behavior._targets == behavior.targets


def test_auto_is_silent_for_an_agent_with_nothing_to_compile(tmp_path, capsys):
    cfg = build_config("random", ["run.progress=false", "run.eval_episodes=0"], {"steps": 50})
    assert cfg.run.compile == "auto"
    Trainer(cfg, tmp_path / "run").train()
    assert "compile" not in capsys.readouterr().err


@pytest.mark.compile
def test_compiled_agent_matches_eager_within_float_rounding(request, monkeypatch):
    """The one real compile of the suite: the world-model loss, the context warm-up, the
    imagined step (mamba2's `step`, with reverie's sampling and step kernels in the graph)
    and the actor-critic losses, with inductor. Same seed, data and random draws: three
    updates agree with eager to 1e-4 (compiled kernels round differently; README, "Compiled
    kernels"). Its inductor cache lives in .pytest_cache:
    the first run compiles (2-4 min on 2 busy cores), later runs load the kernels (~15 s)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(request.config.cache.mkdir("inductor")))
    cfg = tiny_config()
    cfg.world.backbone, cfg.world.backbone_kwargs = "mamba2", {"head_dim": 16}
    runs, acts, graphs = {}, {}, counters["stats"]["unique_graphs"]
    obs = [{"vector": torch.randn(2, 5, generator=torch.Generator().manual_seed(t)).numpy()}
           for t in range(4)]
    firsts = [np.array([True, True]), np.array([False, False]), np.array([False, True]),
              np.array([False, False])]
    for mode in ("off", "on"):
        torch.manual_seed(0)
        agent = ImagineAgent(OBS_SPEC, SPACES["discrete"], cfg, torch.device("cpu"), 0)
        notes: list[str] = []
        if mode == "on":
            agent.compile(Compiler(notes.append))
        replay = FakeReplay(SPACES["discrete"])
        runs[mode] = [agent.update(replay) for _ in range(3)]
        # acting (compiled under on: one graph per explore flag, compiled at its first act),
        # rows starting episodes at some steps; each act's actions and its state
        state, acts[mode] = agent.initial_state(2), []
        for explore in (True, False):
            for i, (o, first) in enumerate(zip(obs, firsts)):
                before = counters["stats"]["unique_graphs"]
                action, state = agent.act(o, first, state, explore)
                acts[mode].append((action, state))
                assert i == 0 or counters["stats"]["unique_graphs"] == before
        # compiling says so once, at the first update, and nothing fell back
        assert len(notes) == (mode == "on") and all("compiles as training starts: up to "
                                                    "~2 min" in n for n in notes), notes
    assert counters["stats"]["unique_graphs"] >= graphs + 5  # it did compile
    # imagination's kernels run inside the compiled graphs, Mamba-2's writing over the
    # rollout's state and conv prefix (no copy of a state-shaped tensor), no recompilation
    from torch.profiler import ProfilerActivity, profile

    graphs, step, same = counters["stats"]["unique_graphs"], agent._imagined_step, []

    def spy(feat, z, index, state):
        ptrs = [layer[k].data_ptr() for layer in state for k in ("ssm", "conv")]
        out = step(feat, z, index, state)
        same.append(ptrs == [layer[k].data_ptr() for layer in out[2] for k in ("ssm", "conv")])
        return out

    agent._imagined_step = spy
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        agent.update(replay)
    with profile(activities=[ProfilerActivity.CPU]) as acting:
        agent.act(obs[0], firsts[1], state, True)
    assert counters["stats"]["unique_graphs"] == graphs
    assert [e.key for e in acting.key_averages() if e.key.startswith("Torch-Compiled Region")]
    assert len(same) == cfg.horizon and all(same)  # the new state in the old one's memory
    ops = prof.key_averages(group_by_input_shape=True)
    calls = {op: sum(e.count for e in ops if e.key == op)
             for op in ("reverie::ssd_step_", "reverie::conv_step_", "reverie::unimix_sample")}
    layers, H = agent.world.backbone.n_layers, cfg.horizon
    assert calls["reverie::ssd_step_"] == calls["reverie::conv_step_"] == layers * H
    assert calls["reverie::unimix_sample"] > H
    start = agent.world.initial_state(cfg.imag_batch)[0]
    shapes = [list(start["ssm"].shape), list(start["conv"].shape)]
    assert not [e.key for e in ops if e.key in ("aten::copy_", "aten::clone")
                and e.input_shapes and list(e.input_shapes[0]) in shapes]
    for (a_eager, s_eager), (a_compiled, s_compiled) in zip(acts["off"], acts["on"]):
        assert np.array_equal(a_eager, a_compiled)
        torch.testing.assert_close(s_compiled, s_eager, rtol=1e-4, atol=1e-4)  # h and state
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


def test_a_process_started_by_reverie_keeps_its_parent_s_cache_choice():
    """A sweep's trials (and Ray's workers) inherit the TORCHINDUCTOR_CACHE_DIR that torch set
    in the sweep's process: they took it for the user's and compiled into /tmp. They inherit
    whether the user chose it, too (`use_cache_dir` acts on that: the test above); a user's
    own choice still holds in them. Children that import reverie only (no torch: fast)."""
    probe = ("import os, reverie\n"
             "print(reverie._INDUCTOR_CACHE_CHOSEN, os.environ['REVERIE_INDUCTOR_CACHE_CHOSEN'])")
    base = {k: v for k, v in os.environ.items()
            if k not in ("REVERIE_INDUCTOR_CACHE_CHOSEN", "TORCHINDUCTOR_CACHE_DIR")}

    def child(**env) -> str:
        out = subprocess.run([sys.executable, "-c", probe], env={**base, **env},
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    torch_set = {"TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor_x"}
    assert child(**torch_set, REVERIE_INDUCTOR_CACHE_CHOSEN="0") == "False 0"  # a trial
    assert child(**torch_set) == "True 1"  # set by the user before reverie started
    assert child(**torch_set, REVERIE_INDUCTOR_CACHE_CHOSEN="1") == "True 1"
    assert child() == "False 0"  # nothing set: handed down as not chosen

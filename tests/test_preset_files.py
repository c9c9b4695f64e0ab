"""--preset FILE: the user's own presets, in the bundled presets' form, optionally on a base."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import reverie
from reverie.cli import main
from reverie.config import AGENT_PRESETS, build_config, load_preset, parse_run_config, unread_keys
from reverie.distributed.grid import make_trials
from reverie.errors import UserError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_preset_file_is_a_preset(tmp_path):
    mine = write(tmp_path / "mine.yaml", "agent: random\nenv: {id: Acrobot-v1}\n"
                                         "run: {steps: 123, train_ratio: 8}\n")
    cfg = build_config(str(mine))
    assert (cfg.agent, cfg.env.id, cfg.run.steps, cfg.run.train_ratio) == \
        ("random", "Acrobot-v1", 123, 8)
    # flags and --set still go on top, as with a bundled preset
    cfg = build_config(str(mine), ["run.train_ratio=4"], {"steps": 50})
    assert (cfg.run.steps, cfg.run.train_ratio) == (50, 4)


def test_a_base_preset_is_changed_only_where_the_file_says(tmp_path):
    mine = write(tmp_path / "mine.yml", "base: cartpole\nrun: {steps: 777}\n"
                                        "imagine: {world: {stoch: 8}}\n")
    cfg, cartpole = build_config(str(mine)), build_config("cartpole")
    assert (cfg.run.steps, cfg.imagine.world.stoch) == (777, 8)
    cfg.run.steps, cfg.imagine.world.stoch = cartpole.run.steps, cartpole.imagine.world.stoch
    assert cfg == cartpole  # everything else is the base's


def test_a_backbone_changed_over_a_base_drops_the_base_backbone_options(tmp_path):
    # cartpole's mamba2 takes head_dim, which a GRU does not
    assert load_preset("cartpole")["imagine"]["world"]["backbone_kwargs"] == {"head_dim": 32}
    gru = write(tmp_path / "gru.yaml", "base: cartpole\nimagine: {world: {backbone: gru}}\n")
    cfg = build_config(str(gru))
    assert cfg.imagine.world.backbone == "gru" and dict(cfg.imagine.world.backbone_kwargs) == {}
    assert cfg.imagine.world.d_model == build_config("cartpole").imagine.world.d_model
    # options given with the new backbone are kept
    ffm = write(tmp_path / "ffm.yaml", "base: cartpole\nimagine: {world: {backbone: ffm, "
                                       "backbone_kwargs: {memory_size: 16}}}\n")
    assert dict(build_config(str(ffm)).imagine.world.backbone_kwargs) == {"memory_size": 16}


def test_bases_chain_from_the_files_own_folder_and_cycles_are_refused(tmp_path, monkeypatch):
    write(tmp_path / "presets" / "small.yaml", "base: random\nrun: {steps: 40}\n")
    write(tmp_path / "presets" / "smaller.yaml", "base: small.yaml\nrun: {train_ratio: 2}\n")
    monkeypatch.chdir(tmp_path.parent)  # a relative base is read beside its file, not the cwd
    cfg = build_config(str(tmp_path / "presets" / "smaller.yaml"))
    assert (cfg.agent, cfg.run.steps, cfg.run.train_ratio) == ("random", 40, 2)
    # a misspelt bundled base is said with the file that names it, however deep in a chain
    write(tmp_path / "presets" / "typo.yaml", "base: cartpol\n")
    write(tmp_path / "presets" / "top.yaml", "base: typo.yaml\n")
    with pytest.raises(UserError, match=r"preset file '.*typo\.yaml', its base: unknown preset "
                                        r"'cartpol' \(did you mean 'cartpole'\?\)"):
        load_preset(str(tmp_path / "presets" / "top.yaml"))
    write(tmp_path / "empty.yaml", "")
    with pytest.raises(UserError, match="is empty; write the settings that differ"):
        load_preset(str(tmp_path / "empty.yaml"))
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_preset(str(tmp_path / "a.yaml"))


def test_train_and_sweep_with_a_preset_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "fast.yaml", "base: random\nrun: {steps: 60, eval_episodes: 0}\n")
    assert main(["train", "--preset", "fast.yaml", "--no-progress", "--out", "r"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["env_steps"] == 60
    # a sweep's trials get the file's absolute path (they may start elsewhere)
    trials = make_trials("fast.yaml", [], 2, None, [], [], tmp_path / "sweep", None)
    assert [t.preset for t in trials] == [str(tmp_path / "fast.yaml")] * 2
    assert [t.steps for t in trials] == [60, 60]


def test_presets_command_describes_each_bundled_preset(capsys):
    from reverie.config import presets

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["preset", "agent", "env", "steps", "about"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert sorted(rows) == presets()
    assert rows["cartpole"][1:4] == ["imagine", "CartPole-v1", "5,000"]
    assert rows["popgym-ppo"][1] == "rppo" and "--preset FILE.yaml" in lines[-1]
    assert main(["presets", "mbpo"]) == 0  # an agent's name: its presets only
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == [
        "mbpo-pendulum", "mbpo-dmc", "mbpo-hopper", "mbpo-inverted-pendulum"]
    assert {line.split()[1] for line in lines[1:-1]} == {"mbpo"}


def test_presets_name_shows_the_whole_preset_and_version_says_what_runs(capsys):
    from importlib import resources

    assert main(["presets", "dmc-small"]) == 0
    text = capsys.readouterr().out
    assert text == (resources.files("reverie") / "presets" / "dmc-small.yaml").read_text()
    assert main(["presets", "dmc-smal"]) == 2
    assert "did you mean 'dmc-small'" in capsys.readouterr().err
    # 'random' names an agent and its one preset: the preset in full, not a one-row table
    assert main(["presets", "random"]) == 0
    text = capsys.readouterr().out
    assert text == (resources.files("reverie") / "presets" / "random.yaml").read_text()
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"reverie {reverie.__version__} (torch ")


@pytest.mark.parametrize("agent", ["imagine", "mbpo", "rppo", "random"])
def test_agent_flag_starts_from_that_agents_preset(agent, capsys):
    """`--agent NAME` alone trains what `--preset <its preset>` trains; with --preset it only
    checks that the preset is one of that agent's."""
    from reverie.config import AGENT_PRESETS, agent_presets

    preset = AGENT_PRESETS[agent]
    assert main(["train", "--agent", agent, "--show-config"]) == 0
    via_agent = capsys.readouterr().out
    assert main(["train", "--preset", preset, "--show-config"]) == 0
    assert via_agent == capsys.readouterr().out and f"agent: {agent}\n" in via_agent
    assert agent_presets(agent)[0] == preset
    for other in agent_presets(agent)[1:]:
        assert main(["train", "--agent", agent, "--preset", other, "--show-config"]) == 0
        assert f"agent: {agent}\n" in capsys.readouterr().out


def test_an_agent_without_a_bundled_preset_is_told_to_bring_one(monkeypatch, capsys):
    from reverie import config

    monkeypatch.setitem(config.AGENTS, "mine", config.AGENTS["random"])  # a user's own agent
    assert main(["train", "--agent", "mine"]) == 2
    assert "has no bundled preset; give --preset FILE.yaml" in capsys.readouterr().err
    assert main(["train", "--set", "agent=mine"]) == 2
    assert "give --preset FILE.yaml holding agent: mine" in capsys.readouterr().err


def test_agent_flag_with_a_preset_file_that_names_no_agent(tmp_path, capsys):
    """Such a file is imagine's (the schema's default agent): --agent imagine takes it as it
    is; any other agent is told to name itself in the file."""
    mine = write(tmp_path / "mine.yaml", "run: {steps: 123}\n")
    assert main(["train", "--agent", "imagine", "--preset", str(mine), "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "agent: imagine\n" in out and "steps: 123\n" in out
    assert main(["train", "--agent", "rppo", "--preset", str(mine)]) == 2
    assert "add `agent: rppo` to it, or `base: popgym-ppo`" in capsys.readouterr().err


@pytest.mark.parametrize("agent", ["imagine", "mbpo", "rppo", "random"])
def test_shown_config_is_a_preset_file_and_omits_keys_the_agent_never_reads(agent, tmp_path,
                                                                           capsys):
    """`--show-config > mine.yaml` then `--preset mine.yaml` trains the same run: the shown
    config (as config.yaml) holds no key the agent would refuse as one it never reads."""
    assert main(["train", "--agent", agent, "--show-config"]) == 0
    shown = capsys.readouterr().out
    (tmp_path / "mine.yaml").write_text(shown)
    assert main(["train", "--preset", str(tmp_path / "mine.yaml"), "--show-config"]) == 0
    assert capsys.readouterr().out == shown
    shown_cfg = OmegaConf.create(yaml.safe_load(shown))
    for key in unread_keys(agent):
        assert OmegaConf.select(shown_cfg, key, default="absent") == "absent", key
    if agent in ("mbpo", "rppo"):  # the keys these never read are the ones refused by --set
        assert unread_keys(agent)[-1] == "run.train_ratio" and "train_ratio" not in shown
    assert ("replay:" in shown) == (agent not in ("mbpo", "rppo"))
    # what a run saves loads back to the whole config: the omitted keys at their defaults
    assert parse_run_config(shown, "shown") == build_config(AGENT_PRESETS[agent])


def test_presets_of_a_users_file_and_a_bad_key_in_one_name_the_file(tmp_path, capsys,
                                                                   monkeypatch):
    mine = write(tmp_path / "my.yaml", "base: cartpole\nimagine:\n  horizn: 8\n")
    assert main(["presets", str(mine)]) == 2  # not "unknown preset ..., or pass your own file"
    err = capsys.readouterr().err
    assert f"run `reverie train --preset {mine} --show-config`" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(UserError, match=rf"in preset {mine}: unknown config key "
                                        r"'imagine.horizn' \(did you mean 'imagine.horizon'"):
        build_config(str(mine))
    # the key may sit in a base file: both are named
    top = write(tmp_path / "top.yaml", "base: my.yaml\n")
    with pytest.raises(UserError, match=rf"in preset {top} or a base it names: unknown"):
        build_config(str(top))
    # another agent's section: said as --set says it (it was "unknown config key 'rppo'
    # (did you mean 'mbpo'?)")
    other = write(tmp_path / "other.yaml", "base: mbpo-pendulum\nrppo:\n  backbone: gru\n")
    with pytest.raises(UserError, match=re.escape(
            f"in preset {other}: its 'rppo:' section holds options of agent "
            "rppo, and its agent is mbpo; set agent: rppo, or put mbpo's options under")):
        build_config(str(other))
    # a section given a value was a TypeError traceback
    for text in ("base: cartpole\nrun: 5\n", "agent: imagine\nrun: [1, 2]\n"):
        bad = write(tmp_path / "bad.yaml", text)
        with pytest.raises(UserError, match=r"'run' must be a section of settings"):
            build_config(str(bad))
    # a stray file named like a bundled preset does not hide it (as for --preset)
    write(tmp_path / "cwd" / "cartpole", "not a preset")
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["presets", "cartpole"]) == 0
    assert capsys.readouterr().out.startswith("#")


def test_backbone_of_names_the_agents_backbone_or_none():
    """Used by the default run folder name and the run's curve.png title."""
    from reverie.config import backbone_of

    assert backbone_of(build_config("cartpole", [], {"backbone": "gru"})) == "gru"
    assert backbone_of(build_config("popgym-ppo")) == "ffm"
    assert backbone_of(build_config("random")) is None
    assert backbone_of(build_config("mbpo-pendulum")) is None


def test_a_runs_title_names_what_makes_another_algorithm_of_its_agent():
    """curve.png of a COPlanner run was titled "Pendulum-v1 · mbpo", as a plain MBPO run's."""
    from reverie.config import run_title

    assert run_title(build_config("mbpo-pendulum")) == "Pendulum-v1 · mbpo (mode=coplanner)"
    assert run_title(build_config("mbpo-pendulum", ["mbpo.mode=mbpo"])) == "Pendulum-v1 · mbpo"
    assert run_title(build_config("cartpole", ["imagine.coplanner.mode=optimistic"])) == \
        "CartPole-v1 · imagine (mamba2, mode=optimistic)"
    assert run_title(build_config("cartpole")) == "CartPole-v1 · imagine (mamba2)"
    assert run_title(build_config("random")) == "CartPole-v1 · random"

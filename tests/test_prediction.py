"""Open-loop prediction error of a world model beside the copy-the-last-frame baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reverie.cli import main
from reverie.config import build_config
from reverie.errors import UserError
from reverie.eval import video
from reverie.eval.prediction import moving_errors, prediction_error, window_errors
from reverie.run.driver import Trainer
from reverie.run.policy import load
from tiny import TINY_MODEL


def test_window_errors_by_hand():
    # context 2, horizon 2, 2-element observations
    real = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [4.0, 1.0]])
    predicted = np.array([[9.0, 9.0], [9.0, 9.0], [2.0, 1.0], [1.0, 1.0]])  # context: ignored
    model, copy_last = window_errors(real, predicted, context=2)
    # model: step 1 ((0)^2 + (1)^2) / 2, step 2 ((3)^2 + 0) / 2
    np.testing.assert_allclose(model, [0.5, 4.5])
    # copy [1, 1]: step 1 ((1)^2 + (1)^2) / 2, step 2 ((3)^2 + 0) / 2
    np.testing.assert_allclose(copy_last, [1.0, 4.5])
    with pytest.raises(ValueError):
        window_errors(real, predicted[:3], context=2)
    with pytest.raises(ValueError):
        window_errors(real, predicted, context=4)


def test_moving_errors_by_hand():
    """Only the elements that changed since the last observed step count: the copy-last
    baseline's error there is the change itself, and a static background is left out."""
    real = np.array([[0.0, 0.0, 5.0], [1.0, 1.0, 5.0], [2.0, 1.0, 5.0], [1.0, 1.0, 5.0]])
    predicted = np.array([[9.0] * 3, [9.0] * 3, [2.0, 3.0, 0.0], [0.0, 1.0, 0.0]])
    model, copy_last, count = moving_errors(real, predicted, context=2)
    # last observed [1, 1, 5]; step 1 real [2, 1, 5]: element 0 moved; step 2 [1, 1, 5]: none
    np.testing.assert_array_equal(count, [1, 0])
    np.testing.assert_allclose(model, [0.0, 0.0])  # predicted 2 where the real value is 2
    np.testing.assert_allclose(copy_last, [1.0, 0.0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "run"
    cfg = build_config("cartpole", [*TINY_MODEL, "run.train_ratio=16", "run.prefill=100",
                                    "run.eval_episodes=0", "run.progress=false",
                                    "run.threads=1", "imagine.context=4"],
                       {"backbone": "gru", "steps": 200})
    Trainer(cfg, out).train()
    return out


@pytest.fixture(scope="module")
def policy(trained):
    return load(trained, device="cpu")


def test_prediction_error_of_a_trained_model(policy):
    err = prediction_error(policy, windows=3, horizon=5)
    assert (err.key, err.context, err.windows) == ("vector", 4, 3)
    assert prediction_error(policy, windows=3, horizon=5) == err  # seeded: reproducible
    assert len(err.model) == len(err.copy_last) == 5
    assert all(np.isfinite(err.model)) and all(v > 0 for v in err.model)
    summary = err.as_dict()
    assert summary["model_mse_mean"] == pytest.approx(np.mean(err.model))
    assert 0 <= summary["steps_model_better"] <= 5


def test_a_model_that_predicts_the_real_episode_has_no_error(policy, monkeypatch):
    """The windows line up: the imagined steps are scored against the real steps after the
    context, and the baseline against the last observed one."""
    calls = []

    def perfect(policy_, observations, actions, context, horizon):
        calls.append((len(observations), len(actions), context, horizon))
        return {"vector": np.stack([o["vector"] for o in observations])}

    monkeypatch.setattr(video, "open_loop", perfect)
    err = prediction_error(policy, windows=4, horizon=3, context=2)
    assert calls == [(5, 5, 2, 3)] * 4
    assert err.model == [0.0, 0.0, 0.0] and err.model_moving == [0.0, 0.0, 0.0]
    assert all(c > 0 for c in err.copy_last)  # CartPole moves every step
    # over the moving elements only, the baseline's error is at least its overall one
    assert all(m >= c for m, c in zip(err.copy_last_moving, err.copy_last))


def test_bad_key_and_agents_without_a_world_model(policy, tmp_path):
    with pytest.raises(UserError, match="observation key 'image' is not one of"):
        prediction_error(policy, windows=1, key="image")
    out = tmp_path / "random"
    Trainer(build_config("random", ["run.eval_episodes=0", "run.progress=false"],
                         {"steps": 50}), out).train()
    with pytest.raises(UserError, match="agent 'random' has no world model"):
        prediction_error(load(out, device="cpu"), windows=1)


def test_eval_command_reports_the_prediction_error(trained, capsys):
    assert main(["eval", str(trained), "--episodes", "1", "--prediction", "2",
                 "--out", str(trained / "pred.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prediction"]["windows"] == 2
    assert len(result["prediction"]["model_mse"]) == 16  # the next 16 observations
    assert main(["eval", str(trained), "--prediction", "-1"]) == 2
    assert capsys.readouterr().err == ("reverie: error: --prediction must be >= 0 windows, "
                                       "got -1\n")


def test_fewer_windows_than_asked_are_said(trained, capsys):
    """`"windows": 1` came back for --prediction 3 without a word."""
    assert main(["eval", str(trained), "--episodes", "1", "--prediction", "3", "--horizon",
                 "40", "--out", str(trained / "pred.json")]) == 0
    captured = capsys.readouterr()
    scored = json.loads(captured.out)["prediction"]["windows"]
    assert 1 <= scored < 3  # the barely trained policy's episodes are short
    assert captured.err == (f"reverie: note: --prediction scored {scored} of 3 windows: the "
                            "greedy episodes held no more windows of 4 observed + 40 imagined "
                            "steps (up to 4 an episode); lower --context/--horizon for more\n")


def test_eval_prediction_window_is_set_on_the_command_line(trained, capsys):
    assert main(["eval", str(trained), "--episodes", "1", "--prediction", "2", "--context",
                 "2", "--horizon", "3", "--out", str(trained / "pred.json")]) == 0
    result = json.loads(capsys.readouterr().out)["prediction"]
    assert result["context"] == 2 and len(result["model_mse"]) == 3
    # longer than any CartPole episode (its time limit is 500 steps): refused before any
    # episode is played, naming the flags that fix it; nothing is written
    (trained / "pred.json").unlink()
    assert main(["eval", str(trained), "--episodes", "1", "--prediction", "1", "--horizon",
                 "600", "--out", str(trained / "pred.json")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not (trained / "pred.json").exists()
    assert captured.err == ("reverie: error: a --prediction window of 604 steps (context 4 + "
                            "horizon 600) is longer than any episode here can be (500 steps); "
                            "lower --horizon or --context\n")


def test_eval_window_flags_without_prediction_are_refused(trained, capsys):
    # they would otherwise be ignored in silence: the user meant to score the model
    assert main(["eval", str(trained), "--episodes", "1", "--horizon", "3"]) == 2
    assert capsys.readouterr().err == (
        "reverie: error: --horizon sets the --prediction windows; add --prediction N "
        "(windows to score) or drop --horizon\n")
    assert main(["eval", str(trained), "--context", "2", "--horizon", "3"]) == 2
    assert "drop --horizon and --context" in capsys.readouterr().err


def test_eval_prediction_needs_a_world_model(tmp_path, capsys):
    out = tmp_path / "random"
    Trainer(build_config("random", ["run.eval_episodes=0", "run.progress=false"],
                         {"steps": 50}), out).train()
    assert main(["eval", str(out), "--prediction", "2"]) == 2
    assert capsys.readouterr().err == (
        "reverie: error: --prediction scores a latent world model's open-loop prediction "
        "(agent imagine); agent 'random' has none (drop --prediction)\n")


def test_a_failed_prediction_prints_the_returns_and_keeps_the_saved_result(trained, capsys,
                                                                          monkeypatch):
    """Windows no greedy episode is long enough for are found only after the episodes are
    played: their returns are printed, but an exit 2 touches nothing on disk (the run's
    eval.json with an earlier prediction was overwritten)."""
    from reverie.eval import prediction

    saved = trained / "eval.json"
    saved.write_text('{"earlier": true}\n')

    def too_short(*args, **kwargs):
        raise UserError("no greedy episode lasted 20 steps")

    monkeypatch.setattr(prediction, "prediction_error", too_short)
    assert main(["eval", str(trained), "--episodes", "1", "--prediction", "2"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["episodes"] == 1
    assert captured.err == ("reverie: error: no greedy episode lasted 20 steps (the returns "
                            "above are not saved)\n")
    assert saved.read_text() == '{"earlier": true}\n'


def test_eval_out_in_a_missing_folder_is_refused_before_playing(trained, tmp_path, capsys):
    assert main(["eval", str(trained), "--episodes", "1",
                 "--out", str(tmp_path / "nowhere" / "e.json")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--out's folder" in captured.err
    assert main(["eval", str(trained), "--episodes", "1", "--out", str(tmp_path)]) == 2
    assert "a file path for the JSON" in capsys.readouterr().err
    # a folder not there yet, named with a trailing /: a file of its name was written
    assert main(["eval", str(trained), "--episodes", "1", "--out", f"{tmp_path / 'new'}/"]) == 2
    assert f"e.g. --out {tmp_path / 'new' / 'eval.json'}" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_the_main_observation_is_the_envs_own_not_the_added_previous_reward():
    from reverie.envs import main_key

    vector, reward = ((4,), "float32"), ((1,), "float32")
    # gymnasium's Dict space sorts its keys: prev_reward comes before vector
    assert main_key({"prev_reward": reward, "vector": vector}) == "vector"
    assert main_key({"image": ((64, 64, 3), "uint8"), "prev_reward": reward}) == "image"
    assert main_key({"prev_reward": reward}) == "prev_reward"  # nothing else to score

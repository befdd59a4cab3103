"""klrl.data and rlvr.load_problem: round trips in every format and a clear error for each bad file."""
import numpy as np
import pytest

import klrl
from klrl import data, rlvr


def arrays(p=3, y=5, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(p, y))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  correct = np.zeros((p, y), bool)
  correct[:, 1] = True
  correct[0, 3] = True
  return {"logp": logp, "correct": correct, "reward": rng.normal(size=(p, y))}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip(tmp_path, suffix):
  a = arrays()
  path = data.save(tmp_path / f"problem{suffix}", a)
  problem = rlvr.load_problem(path)
  np.testing.assert_array_equal(np.asarray(problem.logp), a["logp"])
  np.testing.assert_array_equal(np.asarray(problem.correct), a["correct"])
  np.testing.assert_array_equal(np.asarray(data.reward(path, shape=a["logp"].shape)), a["reward"])
  # probabilities and logits are accepted when said so
  path = data.save(tmp_path / f"probs{suffix}", {"logp": np.exp(a["logp"]), "correct": a["correct"]})
  np.testing.assert_allclose(np.asarray(rlvr.load_problem(path, probabilities=True).logp), a["logp"], atol=1e-15)
  path = data.save(tmp_path / f"logits{suffix}", {"x": a["logp"] + 3.0})
  np.testing.assert_allclose(np.asarray(data.log_probs(path, "x", normalise=True)), a["logp"], atol=1e-14)


def test_npy_and_float32(tmp_path):
  a = arrays()
  path = data.save(tmp_path / "ref.npy", {"logp": a["logp"].astype(np.float32)})
  out = data.log_probs(path, key="ignored for .npy")
  assert out.dtype == np.float32
  np.testing.assert_allclose(np.asarray(out), a["logp"], rtol=1e-6)


def bad(tmp_path, name, **changes):
  a = arrays()
  a.update(changes)
  return data.save(tmp_path / name, {k: v for k, v in a.items() if v is not None})


def test_errors_name_the_file_the_array_and_the_row(tmp_path):
  a = arrays()
  with pytest.raises(klrl.InputError, match="has no array 'logp' \\(it has: correct, reward\\)"):
    rlvr.load_problem(bad(tmp_path, "a.npz", logp=None))
  with pytest.raises(klrl.InputError, match="must have 2 axes"):
    rlvr.load_problem(bad(tmp_path, "b.npz", logp=a["logp"][0]))
  with pytest.raises(klrl.InputError, match="has shape \\(3, 4\\), expected \\(3, 5\\)"):
    rlvr.load_problem(bad(tmp_path, "c.npz", correct=a["correct"][:, :4]))
  unnormalised = a["logp"].copy()
  unnormalised[2] += 0.01
  with pytest.raises(klrl.InputError, match="is not normalised: row \\(2,\\) has logsumexp 0.01"):
    rlvr.load_problem(bad(tmp_path, "d.safetensors", logp=unnormalised))
  nan = a["logp"].copy()
  nan[1, 4] = np.nan
  with pytest.raises(klrl.InputError, match="contains NaN at row \\(1,\\), position 4"):
    rlvr.load_problem(bad(tmp_path, "e.npz", logp=nan))
  with pytest.raises(klrl.InputError, match="must be a boolean mask \\(dtype bool\\), got dtype int64"):
    rlvr.load_problem(bad(tmp_path, "f.npz", correct=a["correct"].astype(np.int64)))
  with pytest.raises(klrl.InputError, match="must be a boolean mask \\(dtype bool\\), got dtype float32"):
    rlvr.load_problem(bad(tmp_path, "g.safetensors", correct=a["correct"].astype(np.float32)))
  none = a["correct"].copy()
  none[1] = False
  with pytest.raises(klrl.InputError, match="no response of positive reference probability as correct for prompt\\(s\\) \\[1\\]"):
    rlvr.load_problem(bad(tmp_path, "h.npz", correct=none))
  with pytest.raises(klrl.InputError, match="must be a floating array, got dtype int64"):
    rlvr.load_problem(bad(tmp_path, "i.npz", logp=np.zeros((3, 5), np.int64)))
  with pytest.raises(klrl.InputError, match="must be finite, got inf"):
    data.reward(bad(tmp_path, "j.npz", reward=np.full((3, 5), np.inf)))
  with pytest.raises(klrl.InputError, match="holds probabilities, which must be finite and >= 0"):
    rlvr.load_problem(bad(tmp_path, "k.npz", logp=-np.ones((3, 5))), probabilities=True)


def test_file_errors(tmp_path):
  with pytest.raises(klrl.InputError, match="does not exist"):
    rlvr.load_problem(tmp_path / "missing.npz")
  with pytest.raises(klrl.InputError, match="klrl reads .npy, .npz, .safetensors"):
    data.read(tmp_path / "x.csv")
  (tmp_path / "corrupt.npz").write_bytes(b"not a zip file")
  with pytest.raises(klrl.InputError, match="could not read"):
    data.read(tmp_path / "corrupt.npz")
  (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 3)
  with pytest.raises(klrl.InputError, match="could not read"):
    data.read(tmp_path / "corrupt.safetensors")

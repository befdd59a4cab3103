"""klrl.instances: every generator and loader, and the theory modules' names for them."""
import inspect

import jax
import numpy as np
import pytest

import klrl
from klrl import data, instances, memoryless, problems, rlvr


def test_published_names_are_the_instances():
  for name in ("random_problem", "zipf_linear", "bernoulli"):
    assert getattr(problems, name) is getattr(instances, name)
  for name in ("read", "save", "log_probs", "mask", "reward"):
    assert getattr(data, name) is getattr(instances, name)
  assert rlvr.Problem is instances.Problem and memoryless.Unigram is instances.Unigram
  assert "instances" in klrl.__all__
  # The theory modules' own names: same arguments, no trace of the name their messages use.
  for fn, base in [(rlvr.random_problem, instances.random_rlvr_problem), (rlvr.load_problem, instances.load_rlvr_problem),
                   (memoryless.load_problem, instances.load_unigram),
                   (memoryless.english_unigram, instances.english_unigram)]:
    assert inspect.signature(fn) == inspect.signature(base)
    assert "where" not in inspect.signature(fn).parameters
    assert f"{fn.__module__}.{fn.__name__}" in ("klrl.rlvr.random_problem", "klrl.rlvr.load_problem",
                                                "klrl.memoryless.load_problem", "klrl.memoryless.english_unigram")


def test_rlvr_generator_under_both_names():
  key = jax.random.PRNGKey(3)
  a = rlvr.random_problem(key, 4, 9, num_correct=2, accuracy=0.3, entropy_correct=0.5)
  b = instances.random_rlvr_problem(key, 4, 9, num_correct=2, accuracy=0.3, entropy_correct=0.5)
  np.testing.assert_array_equal(np.asarray(a.logp), np.asarray(b.logp))
  np.testing.assert_array_equal(np.asarray(a.correct), np.asarray(b.correct))
  np.testing.assert_allclose(np.exp(np.asarray(a.logp)).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.where(np.asarray(a.correct), np.exp(np.asarray(a.logp)), 0).sum(-1), 0.3, rtol=1e-5)
  with pytest.raises(klrl.InputError, match=r"^klrl\.rlvr\.random_problem: argument 'num_correct'"):
    rlvr.random_problem(key, 2, 5, num_correct=5)
  with pytest.raises(klrl.InputError, match=r"^klrl\.instances\.random_rlvr_problem: argument 'accuracy'"):
    instances.random_rlvr_problem(key, 2, 5, num_correct=2, accuracy=1.0)


def test_loaders_name_the_function_called(tmp_path):
  logp = np.log(np.array([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]))
  none = np.array([[True, False, False], [False, False, False]])
  path = data.save(tmp_path / "p.npz", {"logp": logp, "correct": none, "reward": np.array([[0.0, 0.5, 1.0]] * 2)})
  for fn, name in [(rlvr.load_problem, "klrl.rlvr.load_problem"), (instances.load_rlvr_problem, "klrl.instances.load_rlvr_problem")]:
    with pytest.raises(klrl.InputError, match=rf"^{name}: array 'correct' of '.*p.npz' marks no response"):
      fn(path)
  for fn, name in [(memoryless.load_problem, "klrl.memoryless.load_problem"), (instances.load_unigram, "klrl.instances.load_unigram")]:
    with pytest.raises(klrl.InputError, match=rf"^{name}: array 'reward' of '.*p.npz' is not on a lattice"):
      fn(path)
    u = fn(path, scale=2)
    np.testing.assert_array_equal(np.asarray(u.reward), [[0.0, 0.5, 1.0]] * 2)
    assert u.words == ()
  # Messages name the function called and the file, whichever array is at fault.
  with pytest.raises(klrl.InputError, match=r"^klrl\.instances\.load_unigram: '.*q.npz' has no array 'logp'"):
    instances.load_unigram(data.save(tmp_path / "q.npz", {"x": logp}))
  with pytest.raises(klrl.InputError, match=r"^klrl\.rlvr\.load_problem: array 'logp' of '.*r.npz' is not normalised"):
    rlvr.load_problem(data.save(tmp_path / "r.npz", {"logp": logp + 1.0, "correct": none}))
  with pytest.raises(klrl.InputError, match=r"^klrl\.rlvr\.load_problem: array 'correct' of '.*s.npz' must be a boolean"):
    rlvr.load_problem(data.save(tmp_path / "s.npz", {"logp": logp, "correct": none.astype(float)}))


def test_english_unigram_under_both_names():
  a, b = memoryless.english_unigram(50), instances.english_unigram(50)
  assert a.words == b.words and len(a.words) == 50 and a.words[0] == "the"
  np.testing.assert_array_equal(np.asarray(a.logp), np.asarray(b.logp))
  np.testing.assert_array_equal(np.asarray(a.reward), np.asarray(b.reward))
  assert abs(float(jax.scipy.special.logsumexp(a.logp))) < 1e-6
  with pytest.raises(klrl.InputError, match=r"^klrl\.memoryless\.english_unigram: argument 'k' must be an int"):
    memoryless.english_unigram(0)
  with pytest.raises(klrl.InputError, match=r"^klrl\.instances\.english_unigram: argument 'k' must be an int"):
    instances.english_unigram(True)


# ---------------------------------------------------------------------------------------------
# Users' files in every byte order and precision, misnamed, damaged, or with members not asked for.

def _problem(rng, rows=3, v=7):
  logp = np.log(rng.dirichlet(np.ones(v), size=rows))
  correct = np.zeros((rows, v), bool)
  correct[:, 0] = True
  return logp, correct


FORMATS = [(suffix, dtype) for suffix in (".npz", ".npy", ".safetensors")
           for dtype in ("<f8", ">f8", "<f4", ">f4", "<f2", ">f2")
           if not (suffix == ".safetensors" and dtype.startswith(">"))]   # safetensors is little-endian by format


@pytest.mark.parametrize("case", range(len(FORMATS)), ids=[f"{s}{d}" for s, d in FORMATS])
def test_files_in_any_byte_order_and_float_width_load_as_native_floats(tmp_path, case):
  suffix, dtype = FORMATS[case]
  if suffix == ".safetensors":
    pytest.importorskip("safetensors")        # the optional extra klrl[data]
  rng = np.random.default_rng(case)
  logp, correct = _problem(rng)
  stored = logp.astype(dtype)
  path = tmp_path / f"p{suffix}"
  if suffix == ".npy":
    np.save(path, stored)
  elif suffix == ".npz":
    np.savez(path, logp=stored, correct=correct)
  else:
    data.save(path, {"logp": stored, "correct": correct})
  got = np.asarray(data.log_probs(path))
  width = np.dtype(dtype).itemsize
  assert got.dtype == (np.float64 if width == 8 else np.float32)
  if width == 2:       # half precision: read as float32 and normalised exactly
    np.testing.assert_allclose(got, stored.astype(np.float32) - np.log(np.exp(stored.astype(np.float64)).sum(-1, keepdims=True)), atol=1e-6)
    np.testing.assert_allclose(np.exp(got.astype(np.float64)).sum(-1), 1.0, atol=1e-6)
  else:
    np.testing.assert_array_equal(got, stored.astype(np.dtype(dtype).newbyteorder("=")))
  if suffix != ".npy":
    problem = rlvr.load_problem(path)
    np.testing.assert_array_equal(np.asarray(problem.logp), got)
    np.testing.assert_array_equal(np.asarray(problem.correct), correct)


def test_half_precision_that_does_not_normalise_is_refused(tmp_path):
  logp, correct = _problem(np.random.default_rng(0))
  path = data.save(tmp_path / "h.npz", {"logp": (logp + 0.05).astype(np.float16), "correct": correct})
  with pytest.raises(klrl.InputError, match=r"array 'logp' of '.*h.npz' is not normalised.*within 0.0078"):
    rlvr.load_problem(path)


def test_misnamed_empty_or_damaged_files_are_refused_naming_the_file(tmp_path):
  logp, correct = _problem(np.random.default_rng(1))
  good_npz = data.save(tmp_path / "good.npz", {"logp": logp, "correct": correct})
  good_npy = data.save(tmp_path / "good.npy", {"logp": logp})
  cases = {
      "npz_named.npy": (good_npz.read_bytes(), r"holds a \.npz archive \(zip\): rename it"),
      "npy_named.npz": (good_npy.read_bytes(), r"holds a \.npy array: rename it"),
      "empty.npz": (b"", r"not in that format"),
      "empty.npy": (b"", r"not in that format"),
      "text.npz": (b"logp,correct\n0.5,True\n", r"not in that format"),
      "random.npy": (np.random.default_rng(2).bytes(300), r"not in that format"),
      "cut.npz": (good_npz.read_bytes()[:200], r"could not read"),
      "cut.npy": (good_npy.read_bytes()[:100], r"could not read"),
  }
  for name, (content, message) in cases.items():
    path = tmp_path / name
    path.write_bytes(content)
    for fn in (data.read, data.log_probs, rlvr.load_problem, memoryless.load_problem):
      if name.endswith(".npy") and fn is rlvr.load_problem:
        continue
      with pytest.raises(klrl.InputError, match=rf"'{tmp_path / name}'.*{message}|{message}.*'{tmp_path / name}'|"
                                                 rf"could not read '{tmp_path / name}'"):
        fn(path)
  with pytest.raises(klrl.InputError, match=r"file '.*missing.npz' does not exist"):
    rlvr.load_problem(tmp_path / "missing.npz")
  with pytest.raises(klrl.InputError, match=r"suffix '.csv'"):
    rlvr.load_problem(tmp_path / "p.csv")


def test_only_the_arrays_asked_for_are_read(tmp_path):
  import tracemalloc
  logp, correct = _problem(np.random.default_rng(3))
  path = tmp_path / "big.npz"
  np.savez_compressed(path, logp=logp, correct=correct, unused=np.zeros(25_000_000))   # 200 MB, compresses to 0.2 MB
  tracemalloc.start()
  try:
    problem = rlvr.load_problem(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 5e6, f"{peak / 1e6:.0f} MB held while reading two small arrays"
  np.testing.assert_array_equal(np.asarray(problem.logp), logp)

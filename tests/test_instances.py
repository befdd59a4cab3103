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
  # The array readers keep their klrl.data names wherever they are called from.
  with pytest.raises(klrl.InputError, match=r"^klrl\.data\.log_probs: '.*q.npz' has no array 'logp'"):
    instances.load_unigram(data.save(tmp_path / "q.npz", {"x": logp}))


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

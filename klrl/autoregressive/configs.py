"""How trainers put the KL penalty into RLHF/RLVR, as data (docs: theory/autoregressive).

A :class:`Config` names every choice that changes what a sampled policy-gradient step
estimates: the per-sample KL estimator, where it goes (reward or loss), token or sequence
level, full return or reward-to-go, the importance ratio off-policy, clamps, the advantage
(none, an exact baseline, RLOO, GRPO, Dr. GRPO), the group size and the length normalisation.
Configs are hashable (static arguments of the compiled functions). :data:`PRESETS` holds the
conventions of TRL, OpenRLHF and verl, and idealised references; :data:`QUESTIONS` says what
each one answers.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from klrl._src import checks as _checks

__all__ = ["Config", "PRESETS", "QUESTIONS"]

CHOICES = {
    "estimator": ("k1", "k2", "k3", "none"),
    "placement": ("reward", "loss"),
    "level": ("token", "sequence"),
    "return_kind": ("full", "to_go"),
    "off_policy": ("on", "stopped", "differentiated"),
    "advantage": ("none", "baseline", "rloo", "grpo", "dr_grpo"),
    "std": ("sample", "population"),
    "length_norm": ("none", "sequence", "max"),
}
GROUP_ADVANTAGES = ("rloo", "grpo", "dr_grpo")


class Config(NamedTuple):
  """One way of estimating the gradient of ``-J`` from sampled sequences (docs: theory/autoregressive).

  With ``log rho_t = log q(y_t|y_<t) - log p(y_t|y_<t)`` the estimators are ``k1 = log rho``,
  ``k2 = (log rho)^2 / 2``, ``k3 = 1/rho - 1 + log rho``, per token (``level="token"``) or applied
  to the sequence's ``log rho = sum_t log rho_t`` (``"sequence"``). Samples come from a sampler
  ``mu`` (the policy itself on-policy); ``w_t = q_t / mu_t`` is the per-token importance ratio.

  Attributes:
    estimator: ``"k1"``, ``"k2"``, ``"k3"`` or ``"none"`` (no KL term).
    placement: ``"reward"``: ``beta k`` (at the sampler's log-probabilities, no gradient through
      it) is subtracted from the return; ``"loss"``: ``beta sum_t k_t(theta)`` is added to the
      loss and differentiated with the samples fixed.
    level: ``"token"`` or ``"sequence"``.
    return_kind: ``"to_go"`` (token ``t`` sees ``sum_{s>=t}`` of rewards and penalties) or
      ``"full"`` (every token sees the whole return). With a group advantage, ``"full"``
      normalises the whole return ``R - beta sum_t k_t`` over the group (verl), ``"to_go"``
      normalises the task reward ``R`` and adds the penalty-to-go (OpenRLHF).
    off_policy: the KL term in the loss at samples of ``mu``: ``"on"`` (no ratio), ``"stopped"``
      (``sg(w_t) k_t``) or ``"differentiated"`` (``w_t(theta) k_t``); at the sequence level the
      ratio is the product of the ``w_t``. The policy term always uses ``w_t(theta) A_t``
      (the PPO surrogate; ``w_t = 1`` with gradient ``grad log q_t`` on-policy).
    clamp: ``None`` or ``c > 0``: the estimator's value is clipped to ``[-c, c]`` (verl's
      ``low_var_kl`` uses 10); no gradient flows where it binds.
    log_clamp: ``None`` or ``c > 0``: ``log rho`` is clipped to ``[-c, c]`` first (verl: 20).
    ratio_clip: ``None`` or PPO's ``epsilon``: the policy term is ``min(w A, clip(w, 1 - eps, 1 + eps) A)``.
    advantage: ``"none"`` (the return), ``"baseline"`` (minus its exact expectation under the
      sampler: ``E_mu[G]`` for full returns, the value ``E_mu[G_t | y_<t]`` of the prefix for
      returns-to-go: a perfect critic), ``"rloo"`` (minus the mean of the other ``group - 1``
      draws), ``"grpo"`` (``(G_i - mean) / (std + eps)`` over the group) or ``"dr_grpo"``
      (``G_i - mean``).
    std: GRPO's standard deviation: ``"sample"`` (``ddof = 1``, ``torch.std``'s default) or ``"population"``.
    group: draws per prompt, ``>= 2`` for group advantages; others average ``group`` independent draws.
    length_norm: ``"none"`` (sum over tokens), ``"sequence"`` (each sequence's sum divided by
      its length ``|y|``, as the GRPO paper) or ``"max"`` (divided by ``T``: Dr. GRPO's
      constant, verl's ``token-mean`` at fixed length).
    eps: added to GRPO's standard deviation.
  """
  estimator: str = "k1"
  placement: str = "reward"
  level: str = "token"
  return_kind: str = "to_go"
  off_policy: str = "on"
  clamp: float | None = None
  log_clamp: float | None = None
  ratio_clip: float | None = None
  advantage: str = "none"
  std: str = "sample"
  group: int = 1
  length_norm: str = "none"
  eps: float = 1e-6


def check(where: str, config, name: str = "config") -> Config:
  """Raises :class:`klrl.InputError` naming ``config`` and the field unless ``config`` is a valid :class:`Config`."""
  if not isinstance(config, Config):
    _checks._fail(where, name, f"must be a klrl.autoregressive.Config (or a value of PRESETS), "
                  f"got {type(config).__name__}")
  for field, allowed in CHOICES.items():
    if getattr(config, field) not in allowed:
      _checks._fail(where, name, f"has {field}={getattr(config, field)!r}; must be one of {allowed}")
  for field in ("clamp", "log_clamp", "ratio_clip"):
    x = getattr(config, field)
    if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0 or math.isinf(x)):
      _checks._fail(where, name, f"has {field}={x!r}; must be None or a finite Python number > 0")
  if isinstance(config.eps, bool) or not isinstance(config.eps, (int, float)) or not 0 <= config.eps < math.inf:
    _checks._fail(where, name, f"has eps={config.eps!r}; must be a finite Python number >= 0")
  low = 2 if config.advantage in GROUP_ADVANTAGES else 1
  if isinstance(config.group, bool) or not isinstance(config.group, int) or config.group < low:
    _checks._fail(where, name, f"has group={config.group!r}; must be a Python int >= {low} "
                  f"for advantage={config.advantage!r}")
  if config.off_policy != "on" and (config.placement != "loss" or config.estimator == "none"):
    _checks._fail(where, name, f"has off_policy={config.off_policy!r}, which corrects the KL term in the loss; "
                  f"it needs placement='loss' and an estimator")
  return config


def penalised_return(config: Config) -> bool:
  """Whether the KL penalty enters the return."""
  return config.placement == "reward" and config.estimator != "none"


_TRL_GRPO = Config("k3", "loss", advantage="grpo", std="sample", eps=1e-4, group=8, length_norm="sequence",
                   ratio_clip=0.2)
_VERL_GRPO = Config("k3", "loss", advantage="grpo", std="sample", eps=1e-6, group=5, length_norm="max",
                    ratio_clip=0.2)

PRESETS: dict[str, Config] = {
    # Idealised references.
    "k1_reward_to_go": Config("k1", "reward", return_kind="to_go"),
    "k1_reward_full": Config("k1", "reward", return_kind="full"),
    "k1_loss": Config("k1", "loss"),
    "k2_loss": Config("k2", "loss"),
    "k2_loss_sequence": Config("k2", "loss", level="sequence"),
    "k3_loss": Config("k3", "loss"),
    "k3_loss_ratio_differentiated": Config("k3", "loss", off_policy="differentiated"),
    # TRL: GRPOTrainer (loss_type="grpo", scale_rewards=True), Dr. GRPO, RLOOTrainer, PPOTrainer.
    "trl_grpo": _TRL_GRPO,
    "trl_dr_grpo": _TRL_GRPO._replace(advantage="dr_grpo", length_norm="max"),
    "trl_rloo": Config("k1", "reward", level="sequence", return_kind="full", advantage="rloo", group=2),
    "trl_ppo": Config("k1", "reward", return_kind="to_go", advantage="baseline", ratio_clip=0.2),
    # verl: use_kl_loss with kl_loss_type k1 / k2 ("mse") / low_var_kl; use_kl_in_reward; PPO with a critic.
    "verl_grpo_low_var_kl": _VERL_GRPO._replace(clamp=10.0, log_clamp=20.0),
    "verl_grpo_k1_loss": _VERL_GRPO._replace(estimator="k1"),
    "verl_grpo_k2_loss": _VERL_GRPO._replace(estimator="k2"),
    "verl_grpo_kl_in_reward": _VERL_GRPO._replace(estimator="k1", placement="reward", return_kind="full"),
    "verl_ppo_kl_in_reward": Config("k1", "reward", return_kind="to_go", advantage="baseline", length_norm="max",
                                    ratio_clip=0.2),
    # OpenRLHF: init_kl_coef (KL in the reward, cumulative returns), --use_kl_loss --kl_estimator.
    "openrlhf_reinforce_pp": Config("k1", "reward", return_kind="to_go", length_norm="sequence", ratio_clip=0.2),
    "openrlhf_rloo": Config("k1", "reward", return_kind="to_go", advantage="rloo", group=4, length_norm="sequence",
                            ratio_clip=0.2),
    "openrlhf_group_norm_k3_loss": Config("k3", "loss", advantage="grpo", std="sample", eps=1e-9, group=4,
                                          length_norm="sequence", ratio_clip=0.2),
    "openrlhf_group_norm_k2_loss": Config("k2", "loss", advantage="grpo", std="sample", eps=1e-9, group=4,
                                          length_norm="sequence", ratio_clip=0.2),
}
"""Named configurations. What each assumes of its trainer (as of 2025; check your version):

- ``k1_reward_to_go``, ``k1_reward_full``: the textbook per-token ``k1`` penalty in the return
  (REINFORCE, no baseline); ``k1_loss``, ``k2_loss``, ``k2_loss_sequence``, ``k3_loss``: each
  estimator added to the loss alone; ``k3_loss_ratio_differentiated``: ``w_t k3_t`` with the
  importance ratio differentiated.
- ``trl_grpo``: TRL ``GRPOTrainer`` with ``loss_type="grpo"``, ``scale_rewards=True``, ``beta > 0``:
  ``k3`` per token in the loss, ``(R - mean)/(std + 1e-4)`` with ``torch.std`` (sample), each
  sequence's token sum divided by its length, PPO clip 0.2, 8 generations.
- ``trl_dr_grpo``: the same with ``loss_type="dr_grpo"``, ``scale_rewards=False``: no std and a
  constant length normalisation.
- ``trl_rloo``: TRL ``RLOOTrainer`` (``token_level_kl=False``): ``k1`` of the whole sequence
  subtracted from the reward, leave-one-out baseline, ``rloo_k=2``.
- ``trl_ppo``: TRL ``PPOTrainer``: ``k1`` per token in the reward, GAE with ``gamma = lambda = 1``
  and a perfect critic (the exact value baseline).
- ``verl_grpo_low_var_kl``, ``verl_grpo_k1_loss``, ``verl_grpo_k2_loss``: verl GRPO with
  ``use_kl_loss=True`` and ``kl_loss_type`` ``low_var_kl`` (``k3`` with ``log rho`` clamped to
  ``+-20`` and the value to ``+-10``), ``k1``, ``mse`` (``k2``); ``torch.std``, ``eps = 1e-6``,
  ``loss_agg_mode="token-mean"`` (one ``1/T`` at fixed length), 5 rollouts, clip 0.2.
- ``verl_grpo_kl_in_reward``: verl with ``use_kl_in_reward=True`` (``kl_penalty="kl"``): the
  token rewards ``r_t - beta k1_t`` are summed and the sum group-normalised.
- ``verl_ppo_kl_in_reward``: verl PPO with the KL in the reward and a (perfect) critic.
- ``openrlhf_reinforce_pp``: OpenRLHF REINFORCE++ without its batch whitening: ``init_kl_coef``
  ``k1`` per token in the reward, cumulative returns, per-sequence token mean.
- ``openrlhf_rloo``: OpenRLHF ``rloo``: leave-one-out on the task reward, then the per-token ``k1``
  penalty and cumulative returns, 4 samples per prompt.
- ``openrlhf_group_norm_k3_loss``, ``openrlhf_group_norm_k2_loss``: OpenRLHF ``group_norm``
  (``(r - mean)/(std + 1e-9)``, sample std) with ``--use_kl_loss --kl_estimator k3`` or ``k2``.
"""

QUESTIONS: dict[str, str] = {
    "k1_reward_to_go": "Is the per-token k1 penalty in the reward-to-go the true gradient? (yes: the reference point)",
    "k1_reward_full": "Does crediting each token with the whole return change the expected gradient? (no: variance)",
    "k1_loss": "What does a k1 term in the loss regularise? (nothing: its expected gradient is 0)",
    "k2_loss": "What does the per-token k2 loss miss of grad KL? (the future-KL terms s > t)",
    "k2_loss_sequence": "Is k2 of the sequence log-ratio in the loss unbiased? (yes)",
    "k3_loss": "Which divergence does per-token k3 in the loss follow? (a local forward KL(p||q) per prefix)",
    "k3_loss_ratio_differentiated": "What does differentiating k3's importance ratio give? (the per-token k2 gradient)",
    "trl_grpo": "Where does TRL's GRPO with its k3 loss converge, and how far from q*?",
    "trl_dr_grpo": "Does dropping GRPO's std and length division (Dr. GRPO) move the fixed point?",
    "trl_rloo": "Is TRL's RLOO with the sequence k1 penalty in the reward unbiased? (yes)",
    "trl_ppo": "Is PPO with a per-token k1 penalty in the reward and a perfect critic unbiased? (yes)",
    "verl_grpo_low_var_kl": "Do verl's low_var_kl clamps change where GRPO with the k3 loss converges?",
    "verl_grpo_k1_loss": "What does verl's k1 KL loss do? (no KL gradient in expectation)",
    "verl_grpo_k2_loss": "How far is verl's k2 (mse) KL loss from the KL gradient under GRPO?",
    "verl_grpo_kl_in_reward": "What does group-normalising a return that contains the k1 penalty do?",
    "verl_ppo_kl_in_reward": "Is verl PPO with the KL in the reward unbiased? (yes, up to the 1/T scale)",
    "openrlhf_reinforce_pp": "Does the per-sequence token mean bias REINFORCE++ with the k1 reward penalty?",
    "openrlhf_rloo": "Is OpenRLHF's RLOO (baseline on the task reward, k1 penalty-to-go) unbiased?",
    "openrlhf_group_norm_k3_loss": "Where does OpenRLHF's group_norm with the k3 loss converge?",
    "openrlhf_group_norm_k2_loss": "Where does OpenRLHF's group_norm with the k2 loss converge?",
}
"""The question each preset of :data:`PRESETS` answers (``klrl audit --list`` prints them)."""

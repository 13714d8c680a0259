"""The local profile's early start (``orchestrator.verl_bridge.early_start``), without Ray: which config node
triggers it, and how verl's trainer gets the reward manager that was started early."""

from omegaconf import OmegaConf

from orchestrator.verl_bridge import early_start


def trainer_config():
    return OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": "hf"}}, "trainer": {"nnodes": 1},
                             "transfer_queue": {"backend": {"storage_backend": "SimpleStorage"}},
                             "reward": {"reward_model": {"enable": False}, "num_workers": 1}})


def test_only_a_node_of_the_trainer_config_triggers_it():
    config = trainer_config()
    assert early_start.trainer_config_of(config.transfer_queue) is config
    assert early_start.trainer_config_of(config) is None  # the root itself: not TransferQueue's node
    assert early_start.trainer_config_of(OmegaConf.create({"backend": {}})) is None  # a standalone TQ config
    assert early_start.trainer_config_of(None) is None


def test_tq_init_starts_early_once_and_then_runs_transfer_queue(monkeypatch):
    config, calls = trainer_config(), []
    monkeypatch.setattr(early_start, "start_early", lambda c: calls.append(("early", c)))
    init = early_start.wrap_tq_init(lambda conf=None: calls.append(("tq", conf)) or "tq-result")
    assert early_start.wrap_tq_init(init) is init  # idempotent
    assert init(config.transfer_queue) == "tq-result"
    assert calls == [("early", config), ("tq", config.transfer_queue)]
    calls.clear()
    init(OmegaConf.create({"backend": {}}))  # TransferQueue used on its own: nothing starts early
    assert [c[0] for c in calls] == ["tq"]


def test_the_trainer_gets_the_early_reward_manager_once(monkeypatch):
    built = []

    class RewardLoopManager:  # stands in for verl's: building one starts named workers
        def __init__(self, config, rm_resource_pool=None):
            built.append((config, rm_resource_pool))

    make = early_start.adopting_reward_loop_manager(RewardLoopManager)
    assert early_start.adopting_reward_loop_manager(make) is make
    early = object()
    monkeypatch.setitem(early_start._early, "reward_loop_manager", early)
    assert make(config="c", rm_resource_pool=None) is early and not built
    assert isinstance(make(config="c", rm_resource_pool=None), RewardLoopManager)  # no early one left
    assert isinstance(make(config="c", rm_resource_pool="pool"), RewardLoopManager)  # a reward model: verl's way
    assert built == [("c", None), ("c", "pool")]

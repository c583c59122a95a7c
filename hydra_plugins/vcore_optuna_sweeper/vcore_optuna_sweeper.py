"""``hydra/sweeper=vcore_optuna``: the Optuna search of :mod:`vcore.search.optuna_search`.

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace package, and registers the configs of the
modules it finds there while it scans them (before any config is composed): this module is that entry point.
"""

from hydra.core.config_store import ConfigStore

from vcore.search import optuna_search  # a module, not its classes: Hydra registers every Sweeper class it sees here


class VcoreOptunaSweeper(optuna_search.OptunaSearch):
    pass


ConfigStore.instance().store(
    group="hydra/sweeper", name="vcore_optuna", node=optuna_search.OptunaSweeperConf, provider="vcore"
)

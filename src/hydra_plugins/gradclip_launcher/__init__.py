"""gradclip's Hydra launcher (``hydra/launcher=population``, the default of configs/train.yaml):
a sweep's jobs that differ only in seed, step sizes, tau or lambda train together as
populations (gradclip.population) in this process. Hydra finds it in the ``hydra_plugins``
namespace package."""

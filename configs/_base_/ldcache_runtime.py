# What every ldcache config shares: its mmdet components registered, and the Runner that signs
# the checkpoints it writes so that it may resume from them (README, "Checkpoints").
custom_imports = dict(imports=['ldcache.train'], allow_failed_imports=False)
runner_type = 'LDCacheRunner'

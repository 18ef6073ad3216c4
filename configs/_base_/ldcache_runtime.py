# What every ldcache config shares: its mmdet components registered (importing them changes no
# other library), and the Runner that signs the checkpoints it writes so that it may resume from
# them; when built, it routes mmengine's checkpoint loading through ldcache's trust check and
# mmcv's NMS of CUDA tensors to torchvision (README, "Checkpoints", "On a GPU machine").
custom_imports = dict(imports=['ldcache.train'], allow_failed_imports=False)
runner_type = 'LDCacheRunner'

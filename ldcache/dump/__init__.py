"""`ldcache dump-teacher`: scan the dataset, compute LD regions (pass 1), run the teacher (pass 2).

scan (the annotation file), regions_pass and teacher_pass (the two passes), repair (--resume on a
finished store), ranks (torchrun), run (options, resume and the summary). The LD domain they use
(views, grid, regions, rows, teacher) lives in `ldcache/domain/`.
"""

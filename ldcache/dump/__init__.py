"""`ldcache dump-teacher`: scan the dataset, compute LD regions (pass 1), run the teacher (pass 2).

scan (the annotation file), views (view geometry), regions and region_rows (Main and VLR from
anchors and boxes), teacher (building and running it), regions_pass and teacher_pass (the two
passes), run (options, resume, ranks and the summary).
"""

"""Studies on top of the library: the assignment's experiments, the multi-task study, the tuner and the report."""

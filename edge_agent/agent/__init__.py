"""The board's agent daemon as a pipeline: intake, admission, MoA run, worker, replies."""

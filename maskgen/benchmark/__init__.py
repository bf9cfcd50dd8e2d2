"""``maskgen benchmark``: methods x datasets x seeds under the paper's protocol, in one resumable command.

config (what to run) -> cells (one ordinary run folder each) -> execute (local processes or submitit)
-> selection (validation picks each method's grid point, and seed where the protocol says so) -> report.
"""

"""One module per `grepq` subcommand (flags and exit codes), plus the dispatcher and the
plumbing they share (cli, config_errors, quiet_logs).
"""

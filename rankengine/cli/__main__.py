"""``python -m rankengine.cli`` (e.g. under ``torchrun``) runs the command line."""

from rankengine.cli.main import main

main()

"""``python -m lorakit.cli``: the same as the ``lorakit`` command."""

from lorakit.cli.app import main

main()

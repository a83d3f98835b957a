"""``python -m urlk_forecast.cli``: the console script."""

from . import main

main()

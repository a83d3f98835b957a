"""One module per station-data file format; :mod:`urlk_forecast.data.readers` is the public entry point."""

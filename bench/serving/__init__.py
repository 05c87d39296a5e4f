"""The serving benchmark's parts; ``bench/serve.py`` runs them in turn."""

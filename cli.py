"""ldcache's command line from a checkout: `python cli.py dump-teacher ...` runs the app of the
`ldcache` console script, defined once in ldcache/cli.py. Python puts this file's folder first
on sys.path, so the checkout's own package is the one imported."""
from ldcache.cli import app

if __name__ == "__main__":
    app(prog_name="ldcache")

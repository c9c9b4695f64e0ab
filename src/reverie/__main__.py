from reverie.cli import entry

entry()

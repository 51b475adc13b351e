from imgconv.cli import script

script()

"""The recipe core: what the config says, and which image heals how, in what order.

Everything a heal decides before it runs anything lives here: image
references read as Docker reads them, ``match`` patterns and their
templates, the recipe shapes, the Dockerfile's bases, ``.dockerignore``
rules, the dependency graph and the config that ties them together. Given
the same config text, these modules give the same answers on any machine,
with no daemon and no event loop, which is why ``check`` can show exactly
what a heal would do.

Pure: every module. ``config.load_config`` reads the one file it is given;
all the meaning is in ``parse_config``, which takes text. ``dockerfile``
alone loads the native Dockerfile parser, and no other module here imports
it: ``serve`` imports the rest and parses only in its worker processes.

May import: the standard library only. Never asyncio, aiohttp, aiodocker or
uvloop, and nothing else of the project.
"""

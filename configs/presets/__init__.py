"""The experiments' presets (recipes.presets): ``<demo|reproduce>-<name>.yaml``, shipped as package data."""

"""The model catalogue: context windows, output limits, capabilities and prices of the major
models, bundled and dated, with the configuration's entries laid over it."""

from .config import CatalogueConfig, catalogue_for
from .facts import CAPABILITIES, Catalogue, ModelFacts, bundled_catalogue, parse_catalogue

__all__ = [
    "CAPABILITIES",
    "Catalogue",
    "CatalogueConfig",
    "ModelFacts",
    "bundled_catalogue",
    "catalogue_for",
    "parse_catalogue",
]

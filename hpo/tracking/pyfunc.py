"""Where models logged before hpo/inference existed find their wrapper: their entry file (the
pyfunc_entry.py inside each of them) imports XrayMassModel from here."""

from hpo.inference.pyfunc import XrayMassModel

__all__ = ["XrayMassModel"]

"""The napari face of napari-virtual-st: reader, sample data, dock widgets, layer helpers.

Everything that imports napari or Qt lives in this package; the engine never imports it.
Entry points are listed in ``napari_virtual_st/napari.yaml`` (npe2 manifest).
"""

"""``dicomnode-eval audit``: how far apart are an archive's scanners, before and after harmonization.

Reads a folder of DICOM (or a PACS), groups the breast DCE acquisitions by scanner domain and
by original versus harmonized (the provenance the node writes, dicomnode/provenance.py),
measures every acquisition once (masks, radiomic features, intensities, kinetics; cached on
disk) and writes ``report.html``, ``metrics.json`` and ``features.csv``.
"""

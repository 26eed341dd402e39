"""``dicomnode-eval audit``: how far apart an archive's scanners are, before and after harmonizing.

Reads a folder of DICOM (or a PACS), groups the breast DCE acquisitions by scanner domain and
by original versus harmonized (the provenance the node writes, dicomnode/provenance.py),
measures every acquisition once (masks, radiomic features, intensities, kinetics; cached on
disk) and writes ``report.html``, ``metrics.json`` and ``features.csv``.
"""

"""dicomnode: a DICOM node that harmonizes breast DCE-MRI across scanners."""

__version__ = "0.1.0"

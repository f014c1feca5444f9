"""The hospital's own systems: studies pulled from a PACS over DICOMweb, results pushed back as DICOM.

Built up by issue 19; its public names are added here as its parts land.
"""

__all__: list[str] = []

"""Generate small, valid DICOM instances for tests (pydicom only, no sample files).

Each instance is a Part 10 file in explicit VR little endian with an 8x8 16-bit grayscale
image, which is the smallest thing Orthanc, DICOMweb and viewers all treat as a real image.
``make_study(size=...)`` makes larger images with a ring pattern, for tests that look at what a
viewer drew (tests/integration/test_ohif.py).
"""

from __future__ import annotations

import datetime
import io
import math
import uuid
from array import array

from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pydicom.uid import UID
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import generate_uid

# Storage SOP classes per modality; anything else is stored as Secondary Capture.
_SOP_CLASSES = {
    "CT": UID("1.2.840.10008.5.1.4.1.1.2"),  # CT Image Storage
    "MR": UID("1.2.840.10008.5.1.4.1.1.4"),  # MR Image Storage
}
_SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
_ROWS = _COLUMNS = 8


def _pixels(seed: int, size: int = _ROWS) -> bytes:
    """Return size x size little-endian uint16 pixels that differ per instance.

    8x8 (the default) is a ramp; larger images are concentric rings around the centre, so a
    rendered image has structure a test (or a person looking at a screenshot) can see.
    """
    if size == _ROWS:
        values = array("H", ((seed * 97 + i * 13) % 4096 for i in range(_ROWS * _COLUMNS)))
    else:
        half = size / 2
        values = array(
            "H",
            (
                int(2048 + 1800 * math.cos(math.hypot(x - half, y - half) / 3 + seed))
                for y in range(size)
                for x in range(size)
            ),
        )
    if array("H", [1]).tobytes() != b"\x01\x00":  # DICOM wants little endian on any host
        values.byteswap()
    return values.tobytes()


def _instance(
    study: Dataset, series_uid: str, series_number: int, number: int, size: int = _ROWS
) -> bytes:
    """Return one encoded instance of the given study and series."""
    sop_class = _SOP_CLASSES.get(study.Modality, _SECONDARY_CAPTURE)
    sop_instance = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.update(study)  # patient and study attributes shared by every instance
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"series {series_number}"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0, 0, float(number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = _pixels(series_number * 1000 + number, size)

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_study(
    n_series: int = 1,
    n_instances: int = 2,
    patient_id: str | None = None,
    patient_name: str = "Test^Patient",
    study_description: str = "authsvc test study",
    modality: str = "CT",
    *,
    study_instance_uid: str | None = None,
    accession_number: str | None = None,
    size: int = _ROWS,
) -> list[bytes]:
    """Return n_series x n_instances encoded instances that all belong to one new study.

    ``size`` is the images' rows and columns (8 by default; see :func:`_pixels`).

    ``patient_id`` defaults to a fresh unique value so tests never see each other's patients.
    """
    if n_series < 1 or n_instances < 1:
        raise ValueError("a study needs at least one series with at least one instance")
    now = datetime.datetime.now()
    study = Dataset()
    study.PatientID = patient_id or f"AUTHSVC-{uuid.uuid4().hex[:12].upper()}"
    study.PatientName = patient_name
    study.PatientBirthDate = "19700101"
    study.PatientSex = "O"
    study.StudyInstanceUID = study_instance_uid or generate_uid()
    study.StudyID = "1"
    study.StudyDate = now.strftime("%Y%m%d")
    study.StudyTime = now.strftime("%H%M%S")
    study.StudyDescription = study_description
    study.AccessionNumber = accession_number or uuid.uuid4().hex[:16].upper()
    study.ReferringPhysicianName = ""
    study.Modality = modality
    study.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so non-ASCII names survive

    instances: list[bytes] = []
    for series_number in range(1, n_series + 1):
        series_uid = generate_uid()
        for number in range(1, n_instances + 1):
            instances.append(_instance(study, series_uid, series_number, number, size))
    return instances

"""TID 1500 measurement report (Comprehensive 3D SR) for a DICOM SEG, with highdicom.

Groups: the liver (volume; ROI = the SEG's "Liver" segment), the tumour burden (total volume and
lesion count; ROI = the "Liver tumor" segment) and one group per lesion (volume and longest axial
diameter, tracked as "Lesion N"). The SEG has one segment for all tumours, so a lesion has no ROI
of its own to point to: its group is a TID 1501 group (measurements without an ROI) with the liver
as finding site, which is what DICOM offers for that, rather than a volumetric group that would
claim the whole tumour segment as the lesion.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

from .atomic_write import atomic_write
from .dicom_seg import MANUFACTURER, MODEL_NAME

ML = ("ml", "UCUM", "milliliter")
MM = ("mm", "UCUM", "millimeter")


def _cc(value: str, scheme: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _measure(name, value: float, unit: tuple, algorithm, derivation=None):
    import highdicom.sr as sr

    return sr.Measurement(name=name, value=float(value), unit=_cc(*unit), algorithm_id=algorithm,
                          derivation=derivation)


def _segment_number(seg: Any, label_name: str) -> int:
    for s in seg.SegmentSequence:
        if str(s.SegmentLabel) == label_name:
            return int(s.SegmentNumber)
    raise ValueError(f"the SEG has no segment '{label_name}'")


def build_dicom_sr(seg: Any, statistics: Any, source_headers: Sequence[Any], model_name: str, model_version: str,
                   liver: str = "Liver", tumor: str = "Liver tumor") -> Any:
    """A Comprehensive3DSR (TID 1500) with ``statistics`` (engine.statistics.Statistics) over ``seg``;
    ``source_headers``: the CT slices the SEG references (evidence of the report, as DICOM requires)."""
    import highdicom as hd
    import highdicom.sr as sr
    from pydicom.sr.codedict import codes

    algorithm = sr.AlgorithmIdentification(name=model_name, version=model_version)
    device = sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=f"{model_name} {model_version}"[:64], manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME))
    volume, liver_site = codes.SCT.Volume, _cc("10200004", "SCT", "Liver")
    neoplasm = _cc("108369006", "SCT", "Neoplasm")
    groups: list = [
        sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=sr.TrackingIdentifier(uid=hd.UID(), identifier=liver),
            referenced_segment=sr.ReferencedSegment.from_segmentation(seg, _segment_number(seg, liver)),
            finding_type=liver_site, algorithm_id=algorithm,
            measurements=[_measure(volume, statistics.liver_ml, ML, algorithm)]),
        sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{tumor} (all lesions)"),
            referenced_segment=sr.ReferencedSegment.from_segmentation(seg, _segment_number(seg, tumor)),
            finding_type=neoplasm, finding_sites=[sr.FindingSite(liver_site)], algorithm_id=algorithm,
            measurements=[
                _measure(volume, statistics.tumor_ml, ML, algorithm),
                # SCT 246205007 "Quantity": the number of separate lesions in the segment.
                _measure(_cc("246205007", "SCT", "Quantity"), statistics.tumor_count,
                         ("{lesions}", "UCUM", "lesions"), algorithm),
            ]),
    ]
    for les in statistics.lesions:
        groups.append(sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=sr.TrackingIdentifier(uid=hd.UID(), identifier=f"Lesion {les.index}"),
            finding_type=neoplasm, finding_sites=[sr.FindingSite(liver_site)], algorithm_id=algorithm,
            measurements=[
                _measure(volume, les.volume_ml, ML, algorithm),
                # Longest diameter within one axial slice (engine.statistics), hence "Maximum".
                _measure(codes.SCT.Diameter, les.longest_axial_diameter_mm, MM, algorithm,
                         derivation=codes.SCT.Maximum),
            ]))
    report = sr.MeasurementReport(
        observation_context=sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    with warnings.catch_warnings():
        # highdicom checks the source's PatientName, which is copied as it is: not this report's to fix.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        return sr.Comprehensive3DSR(
            evidence=[seg, *source_headers], content=report, series_instance_uid=hd.UID(),
            series_number=int(getattr(seg, "SeriesNumber", 0) or 0) + 1, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            series_description=f"Liver measurements ({model_name} {model_version})"[:64])


def write_dicom_sr(seg: Any, statistics: Any, source_headers: Sequence[Any], path: str | os.PathLike,
                   model_name: str, model_version: str, overwrite: bool = False, labels: Sequence[dict] = ()) -> Any:
    """Build the report (``build_dicom_sr``) and write it atomically to ``path``; returns the dataset.

    ``labels``: the bundle's labels (value 1 = liver, 2 = tumour), for their segment names."""
    names = {int(lab["value"]): str(lab["name"]) for lab in labels}
    sr_ds = build_dicom_sr(seg, statistics, source_headers, model_name, model_version,
                           liver=names.get(1, "Liver"), tumor=names.get(2, "Liver tumor"))
    atomic_write(path, lambda tmp: sr_ds.save_as(str(tmp)), overwrite=overwrite)
    return sr_ds

"""The FHIR R4 face of the reference service: ``/fhir`` (:mod:`.api`: Patient read,
search, create and update, ``metadata``, bulk ``$export``) and ``healthdb fhir import``
(:mod:`.cli`).

Everything goes through the same facade, walls, masking and audit as ``/api/v1``; the
mapping is documented in docs/fhir.md. Nothing is imported here, so the command line does
not load the web stack or the FHIR models until a command needs them.
"""

"""Everything layerq keeps: object storage (S3 or local disk) and the records in Redis. This is the only
package that speaks Redis; `keys.py` names every key, `services.py` opens every store."""

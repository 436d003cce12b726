"""``mednca serve``: a local web app for segmenting scans in a browser (needs ``mednca[web]``).

``models`` (what the app offers) -> ``segment`` (one upload through the pipeline) -> ``jobs``
(a queue with one worker, temporary folders) -> ``app`` (FastAPI: the page, its files, the API).
"""

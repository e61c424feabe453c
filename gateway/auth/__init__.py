"""Authentication: from one Bearer header to a verified ``Principal`` (T1-T11). No aiohttp here."""

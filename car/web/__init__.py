"""The HTTP API and the page: a stdlib ThreadingHTTPServer, no framework (DESIGN.md §4).

Layering: car.web imports from car; nothing in car below the CLI imports car.web.
"""

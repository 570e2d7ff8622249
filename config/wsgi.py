import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Everything loaded so far (settings, apps, models) lives as long as the process:
# move it out of the collector's way, so a full collection, which large requests
# (a usage batch allocates thousands of objects) set off every few requests, walks
# only what requests made. In a pre-forking server it also keeps forked workers
# from touching, and copying, the shared pages. (Python's gc.freeze documentation.)
gc.freeze()

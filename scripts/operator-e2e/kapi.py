#!/usr/bin/env python3
"""A Kubernetes API emulator for the operator's end-to-end test.

kmock (PyPI, 0.8) serves the HTTP side: the aiohttp server, the parsing of
Kubernetes URLs into resource/namespace/name/subresource, and discovery of the
built-in kinds from its bundled resource list. As shipped it is too thin for
kubectl and kube-rs; this shim adds what they need:

- uid / resourceVersion / generation / creationTimestamp on objects, and a
  global resourceVersion counter; no watch event for a write that changes
  nothing;
- CRDs applied through the API are registered into discovery (kind, plural,
  short names, scope, the status subresource);
- `kind`/`apiVersion` on lists; label selectors (=, !=, exists) on lists,
  watches and collection deletes;
- PUT; merge, strategic-merge (treated as merge), JSON and apply patches
  (apply = create-or-merge); the status subresource (writes to it change only
  .status, writes to the main resource never change .status);
- finalizer-aware DELETE (deletionTimestamp + generation bump, removal once
  the finalizers are gone) and collection DELETE;
- watches as newline-delimited JSON with an `application/json` content type,
  starting after the requested resourceVersion;
- the `groupVersion` of `/api/v1` ("v1");
- `certificates.k8s.io/v1` `podcertificaterequests` (with a status
  subresource), which kmock's bundled list predates;
- server-side printing (`as=Table`) with a CRD's additionalPrinterColumns,
  so `kubectl get` shows them.

kubectl then needs `--validate=false` (there is no OpenAPI document).

Usage: kapi.py --port-file FILE   (binds 127.0.0.1 on a free port, writes it)
"""

import argparse
import asyncio
import copy
import datetime
import json
import os
import re
import signal
import uuid

import aiohttp.web
import jsonpatch
import kmock
import yaml


def now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def merge(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


def parse_selector(s):
    reqs = []
    for part in filter(None, (p.strip() for p in (s or '').split(','))):
        if '!=' in part:
            k, v = part.split('!=', 1)
            reqs.append(('ne', k.strip(), v.strip()))
        elif '==' in part:
            k, v = part.split('==', 1)
            reqs.append(('eq', k.strip(), v.strip()))
        elif '=' in part:
            k, v = part.split('=', 1)
            reqs.append(('eq', k.strip(), v.strip()))
        elif part.startswith('!'):
            reqs.append(('absent', part[1:].strip(), None))
        else:
            reqs.append(('exists', part, None))
    return reqs


def matches(obj, reqs):
    labels = (obj.get('metadata') or {}).get('labels') or {}
    for op, k, v in reqs:
        if op == 'eq' and labels.get(k) != v:
            return False
        if op == 'ne' and labels.get(k) == v:
            return False
        if op == 'exists' and k not in labels:
            return False
        if op == 'absent' and k in labels:
            return False
    return True


def jsonpath(obj, path):
    """The subset of JSONPath printer columns use: .a.b, [?(@.k=="v")]."""
    cur = [obj]
    for part in re.findall(r'\.([A-Za-z0-9_-]+)|\[\?\(@\.([A-Za-z0-9_-]+)=="([^"]*)"\)\]', path):
        field, fk, fv = part
        nxt = []
        for c in cur:
            if field and isinstance(c, dict) and field in c:
                nxt.append(c[field])
            elif fk and isinstance(c, list):
                nxt.extend(x for x in c if isinstance(x, dict) and x.get(fk) == fv)
        cur = nxt
    return cur[0] if cur else None


def age(ts):
    try:
        then = datetime.datetime.strptime(ts, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return '<unknown>'
    secs = int((datetime.datetime.now(tz=datetime.timezone.utc) - then).total_seconds())
    return f'{secs}s' if secs < 120 else f'{secs // 60}m'


class Error(Exception):
    def __init__(self, code, reason, message):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def response(self):
        return aiohttp.web.json_response({
            'apiVersion': 'v1', 'kind': 'Status', 'metadata': {}, 'status': 'Failure',
            'code': self.code, 'reason': self.reason, 'message': self.message,
        }, status=self.code)


class KubeShim(kmock.KubernetesEmulator):
    """kmock's emulator with the stateful API kubectl and kube-rs need."""

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.store = {}       # (group, plural, namespace, name) -> object
        self.rv = 1
        self.events = []      # (rv, (group, plural), event)
        self.changed = asyncio.Condition()
        self.columns = {}     # (group, plural) -> additionalPrinterColumns
        # certificates.k8s.io/v1 PodCertificateRequest (GA in Kubernetes
        # 1.37) is newer than kmock's bundled list. Served like any
        # namespaced kind with a status subresource; the admission checks of
        # a real API server (proof of possession, pod/node consistency) are
        # not emulated, which is why the signer checks them itself.
        self.resources[kmock.resource('certificates.k8s.io', 'v1', 'podcertificaterequests')] = kmock.ResourceInfo(
            kind='PodCertificateRequest',
            singular='podcertificaterequest',
            namespaced=True,
            verbs=['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'],
            shortnames=[],
            subresources=['status'],
        )

    # ------------------------------------------------------------ discovery

    async def _serve_version(self, request):
        out = await super()._serve_version(request)
        if request.resource.group == '':
            out['groupVersion'] = 'v1'
        for r in out.get('resources', []):
            if '/' in r['name']:  # subresources have no short names
                r['shortNames'] = []
        return out

    def register_crd(self, crd):
        spec = crd.get('spec') or {}
        names = spec.get('names') or {}
        for v in spec.get('versions') or []:
            res = kmock.resource(spec['group'], v['name'], names['plural'])
            self.columns[(spec['group'], names['plural'])] = v.get('additionalPrinterColumns') or []
            subs = ['status'] if (v.get('subresources') or {}).get('status') is not None else []
            self.resources[res] = kmock.ResourceInfo(
                kind=names.get('kind'),
                singular=names.get('singular') or names['kind'].lower(),
                namespaced=spec.get('scope') == 'Namespaced',
                verbs=['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'],
                shortnames=names.get('shortNames') or [],
                subresources=subs,
            )

    def info(self, res):
        for known in self._get_resources():
            if known == res:
                return self.resources[known] if known in list(self.resources) else None
        return None

    def kind_of(self, res):
        try:
            info = self.resources[res]
            if info.kind:
                return info.kind
        except Exception:
            pass
        return res.plural.capitalize()

    def api_version(self, res):
        return res.version if res.group == '' else f'{res.group}/{res.version}'

    # ------------------------------------------------------------ state

    def bump(self):
        self.rv += 1
        return str(self.rv)

    async def emit(self, res, type_, obj):
        self.events.append((self.rv, (res.group, res.plural), {'type': type_, 'object': copy.deepcopy(obj)}))
        async with self.changed:
            self.changed.notify_all()

    def key(self, res, ns, name):
        return (res.group, res.plural, ns or None, name)

    async def write(self, res, key, new, old):
        """Stores `new` (replacing `old`), with metadata bookkeeping."""
        meta = new.setdefault('metadata', {})
        if old is None:
            meta['uid'] = str(uuid.uuid4())
            meta['creationTimestamp'] = now()
            meta['generation'] = 1
            meta.pop('deletionTimestamp', None)
        else:
            om = old['metadata']
            for f in ('uid', 'creationTimestamp'):
                meta[f] = om.get(f)
            if om.get('deletionTimestamp'):
                meta['deletionTimestamp'] = om['deletionTimestamp']
            meta['generation'] = om.get('generation', 1)
            meta['resourceVersion'] = om.get('resourceVersion')
            strip = lambda o: {k: v for k, v in o.items() if k not in ('metadata', 'status')}
            if strip(new) != strip(old):
                meta['generation'] = om.get('generation', 1) + 1
            if new == old:
                return new  # no-op write: no new version, no event
        new['apiVersion'] = self.api_version(res)
        new['kind'] = self.kind_of(res)
        meta['resourceVersion'] = self.bump()
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            self.store.pop(key, None)
            await self.emit(res, 'DELETED', new)
            return new
        self.store[key] = new
        await self.emit(res, 'ADDED' if old is None else 'MODIFIED', new)
        if res.group == 'apiextensions.k8s.io' and res.plural == 'customresourcedefinitions':
            self.register_crd(new)
        return new

    # ------------------------------------------------------------ handlers

    async def _handle(self, request):
        if request.resource is None or request.resource.plural is None:
            return await super()._handle(request)
        try:
            return await self.dispatch(request)
        except Error as e:
            return e.response()

    async def dispatch(self, request):
        raw = request._raw_request
        res, ns, name, sub = request.resource, request.namespace, request.name, request.subresource
        method = raw.method.upper()
        params = dict(raw.query)
        if self.info(res) is None and not any(k[:2] == (res.group, res.plural) for k in self.store):
            raise Error(404, 'NotFound', f'the server could not find the requested resource ({res})')
        body = request.body or b""
        ctype = raw.headers.get('Content-Type', '')
        if method == 'GET' and name is None:
            if params.get('watch') in ('1', 'true'):
                return await self.watch(raw, res, ns, params)
            return self.list(res, ns, params, raw)
        if method == 'DELETE' and name is None:
            return await self.delete_collection(res, ns, params)
        if method == 'POST':
            data = json.loads(body)
            name = data.get('metadata', {}).get('name')
            ns = ns or data.get('metadata', {}).get('namespace')
            if ns:
                data['metadata']['namespace'] = ns
            key = self.key(res, ns, name)
            if key in self.store:
                raise Error(409, 'AlreadyExists', f'{res.plural} "{name}" already exists')
            data.pop('status', None) if self.has_status(res) else None
            return aiohttp.web.json_response(await self.write(res, key, data, None), status=201)
        key = self.key(res, ns, name)
        old = self.store.get(key)
        if method == 'GET':
            if old is None:
                raise Error(404, 'NotFound', f'{res.plural} "{name}" not found')
            if self.wants_table(raw, res):
                return self.table(res, [old])
            return aiohttp.web.json_response(old)
        if method == 'DELETE':
            if old is None:
                raise Error(404, 'NotFound', f'{res.plural} "{name}" not found')
            return aiohttp.web.json_response(await self.delete(res, key, old))
        if method == 'PUT':
            data = json.loads(body)
            if old is None:
                raise Error(404, 'NotFound', f'{res.plural} "{name}" not found')
            want_rv = data.get('metadata', {}).get('resourceVersion')
            if want_rv and want_rv != old['metadata']['resourceVersion']:
                raise Error(409, 'Conflict', 'the object has been modified; please apply your changes to the latest version')
            new = self.confine(res, sub, old, data)
            return aiohttp.web.json_response(await self.write(res, key, new, old))
        if method == 'PATCH':
            if 'apply-patch' in ctype:
                data = yaml.safe_load(body)
                if old is None:
                    if sub:
                        raise Error(404, 'NotFound', f'{res.plural} "{name}" not found')
                    data.setdefault('metadata', {})['name'] = name
                    if ns:
                        data['metadata']['namespace'] = ns
                    data.pop('status', None) if self.has_status(res) else None
                    return aiohttp.web.json_response(await self.write(res, key, data, None), status=201)
                patched = merge(old, data)
            elif old is None:
                raise Error(404, 'NotFound', f'{res.plural} "{name}" not found')
            elif 'json-patch' in ctype:
                patched = jsonpatch.apply_patch(old, json.loads(body))
            else:  # merge-patch and strategic-merge-patch
                data = json.loads(body)
                want_rv = (data.get('metadata') or {}).get('resourceVersion')
                if want_rv and want_rv != old['metadata']['resourceVersion']:
                    raise Error(409, 'Conflict', 'the object has been modified; please apply your changes to the latest version')
                patched = merge(old, data)
            new = self.confine(res, sub, old, patched)
            return aiohttp.web.json_response(await self.write(res, key, new, old))
        raise Error(405, 'MethodNotAllowed', f'{method} is not supported')

    def has_status(self, res):
        try:
            return 'status' in self.resources[res].subresources
        except Exception:
            return False

    def confine(self, res, sub, old, new):
        """The status subresource changes only .status; the main resource never does."""
        new = copy.deepcopy(new)
        if sub == 'status':
            out = copy.deepcopy(old)
            if 'status' in new:
                out['status'] = new['status']
            return out
        if self.has_status(res):
            if 'status' in old:
                new['status'] = copy.deepcopy(old['status'])
            else:
                new.pop('status', None)
        return new

    async def delete(self, res, key, old):
        meta = old['metadata']
        if meta.get('finalizers'):
            if meta.get('deletionTimestamp'):
                return old
            new = copy.deepcopy(old)
            new['metadata']['deletionTimestamp'] = now()
            new['metadata']['generation'] = meta.get('generation', 1) + 1
            new['metadata']['resourceVersion'] = self.bump()
            self.store[key] = new
            await self.emit(res, 'MODIFIED', new)
            return new
        self.store.pop(key, None)
        gone = copy.deepcopy(old)
        gone['metadata']['resourceVersion'] = self.bump()
        await self.emit(res, 'DELETED', gone)
        return gone

    def select(self, res, ns, params):
        reqs = parse_selector(params.get('labelSelector'))
        return [
            o for (g, p, ons, _), o in sorted(self.store.items(), key=lambda kv: str(kv[0]))
            if (g, p) == (res.group, res.plural) and (ns is None or ons == ns) and matches(o, reqs)
        ]

    def table(self, res, items):
        cols = self.columns[(res.group, res.plural)]
        defs = [{'name': 'Name', 'type': 'string', 'format': 'name', 'description': '', 'priority': 0}]
        defs += [{'name': c['name'], 'type': 'string', 'format': '', 'description': c.get('description', ''),
                  'priority': c.get('priority', 0)} for c in cols]
        rows = []
        for o in items:
            cells = [o['metadata']['name']]
            for c in cols:
                v = jsonpath(o, c['jsonPath'])
                cells.append(age(v) if c.get('type') == 'date' else ('' if v is None else v))
            rows.append({'cells': cells, 'object': {
                'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/v1', 'metadata': o['metadata']}})
        return aiohttp.web.json_response({
            'kind': 'Table', 'apiVersion': 'meta.k8s.io/v1',
            'metadata': {'resourceVersion': str(self.rv)}, 'columnDefinitions': defs, 'rows': rows,
        })

    def wants_table(self, raw, res):
        return 'as=Table' in raw.headers.get('Accept', '') and (res.group, res.plural) in self.columns

    def list(self, res, ns, params, raw=None):
        if raw is not None and self.wants_table(raw, res):
            return self.table(res, self.select(res, ns, params))
        return aiohttp.web.json_response({
            'apiVersion': self.api_version(res),
            'kind': f'{self.kind_of(res)}List',
            'metadata': {'resourceVersion': str(self.rv)},
            'items': self.select(res, ns, params),
        })

    async def delete_collection(self, res, ns, params):
        items = self.select(res, ns, params)
        for o in items:
            m = o['metadata']
            await self.delete(res, self.key(res, m.get('namespace'), m['name']), o)
        return self.list(res, ns, params)

    async def watch(self, raw, res, ns, params):
        resp = aiohttp.web.StreamResponse(headers={'Content-Type': 'application/json'})
        await resp.prepare(raw)
        reqs = parse_selector(params.get('labelSelector'))
        since = int(params.get('resourceVersion') or 0)
        timeout = float(params.get('timeoutSeconds') or 300)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if since == 0:
            for o in self.select(res, ns, params):
                await resp.write(json.dumps({'type': 'ADDED', 'object': o}).encode() + b'\n')
            since = self.rv
        try:
            while loop.time() < deadline:
                for rv, which, ev in self.events:
                    if rv <= since or which != (res.group, res.plural):
                        continue
                    since = rv
                    o = ev['object']
                    if (ns is None or o['metadata'].get('namespace') == ns) and matches(o, reqs):
                        await resp.write(json.dumps(ev).encode() + b'\n')
                async with self.changed:
                    try:
                        await asyncio.wait_for(self.changed.wait(), timeout=min(5.0, max(0.1, deadline - loop.time())))
                    except asyncio.TimeoutError:
                        pass
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--port-file', required=True, help='where to write the port once listening')
    args = ap.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with KubeShim() as shim, kmock.Server(shim) as server:
        tmp = args.port_file + '.tmp'
        with open(tmp, 'w') as f:
            f.write(str(server.port))
        os.replace(tmp, args.port_file)
        await stop.wait()


if __name__ == '__main__':
    asyncio.run(main())

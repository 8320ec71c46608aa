"""STS: moto issues the credentials; the sandbox checks the ExternalId, the caller's hub policy and the role's
trust policy (sts:AssumeRole, and sts:SetSourceIdentity for a SourceIdentity), and remembers the session."""

from __future__ import annotations

import json
import re
from typing import Any

from sandbox.errors import AwsError
from sandbox.iam import AssumedSession, validate_policy
from sandbox.registry import CallContext, handles

_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
_ACCESS_KEY = re.compile(rb"<AccessKeyId>([^<]+)</AccessKeyId>")
MAX_PACKED_POLICY = 2048


@handles("sts", "AssumeRole")
def assume_role(ctx: CallContext, params: dict[str, Any]) -> Any:
    role_arn = params["RoleArn"]
    session_name = params["RoleSessionName"]
    if not _SESSION_NAME.match(session_name):
        raise AwsError("ValidationError", f"RoleSessionName {session_name!r} does not match [\\w+=,.@-]{{2,64}}")
    source_identity = params.get("SourceIdentity")
    if source_identity is not None and not _SESSION_NAME.match(source_identity):
        raise AwsError("ValidationError", "SourceIdentity does not match [\\w+=,.@-]{2,64}")
    expected = ctx.iam.external_id
    denied = "sts:AssumeRole" if expected is not None and params.get("ExternalId") != expected else None
    denied = denied or ctx.iam.assume_role_denial(ctx.account_id, role_arn, params)
    if denied is not None:
        # AWS names the action refused and the role, never the ExternalId or the policy.
        raise AwsError("AccessDenied", f"User is not authorized to perform: {denied} on resource: {role_arn}", 403)
    session_policy = None
    if params.get("Policy"):
        try:
            session_policy = validate_policy(json.loads(params["Policy"]))
        except ValueError as exc:
            raise AwsError("MalformedPolicyDocument", f"The session policy is not valid: {exc}") from exc
        packed = json.dumps(session_policy, separators=(",", ":"))
        if len(packed) > MAX_PACKED_POLICY:
            raise AwsError(
                "PackedPolicyTooLarge",
                f"Packed policy consumes {len(packed) * 100 // MAX_PACKED_POLICY}% of allotted space",
            )
    response = ctx.call_moto()
    match = _ACCESS_KEY.search(response.body)
    if response.status == 200 and match:
        ctx.iam.remember_session(
            match.group(1).decode(), AssumedSession(role_arn, session_name, session_policy, source_identity)
        )
    return response

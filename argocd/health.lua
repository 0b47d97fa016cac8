-- Argo CD health check for every callguard.io kind (argocd-cm-patch.yaml installs it per kind).
-- Callguard writes the same status on every kind: observedGeneration, and the conditions Ready
-- (always, once reconciled), Reconciling (work in progress) and Stalled (invalid configuration,
-- with the validation message), the ones Flux's kstatus reads too.
-- Argo CD runs this with gopher-lua (Lua 5.1): `obj` is the live object, the result is `hs`.
hs = {}

local function condition(conditions, wanted)
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

-- A status written for an older spec says nothing about the current one.
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile generation " .. tostring(generation)
  return hs
end

local stalled = condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(stalled, "Stalled")
  return hs
end

local ready = condition(status.conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  -- Ready with less security than asked for (credentials withheld, a setting not delivered): still
  -- Healthy, since nothing is broken, but the message says what was given up.
  local downgraded = condition(status.conditions, "Downgraded")
  if downgraded ~= nil and downgraded.status == "True" then
    hs.message = "Downgraded: " .. message_of(downgraded, "Downgraded")
  else
    hs.message = message_of(ready, "Ready")
  end
  return hs
end

local reconciling = condition(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = message_of(reconciling, message_of(ready, "Reconciling"))
  return hs
end
if ready.status == "False" then
  hs.status = "Degraded"
  hs.message = message_of(ready, "Not ready")
  return hs
end

-- Ready Unknown: the operator has not decided yet.
hs.status = "Progressing"
hs.message = message_of(ready, "Waiting for the operator")
return hs

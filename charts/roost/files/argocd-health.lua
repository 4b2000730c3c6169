-- Argo CD health check for roost.dev/ModelDeployment (resource.customizations.health.roost.dev_ModelDeployment).
-- Reads the kstatus conditions roost-operator writes (Ready, Reconciling, Stalled) and spec.paused:
--   Progressing  the operator has not observed the latest generation yet, a canary is being
--                rolled out (Reconciling=True), or pods are still starting
--   Degraded     Stalled=True: a canary was rolled back (the spec still asks for it), the spec
--                is invalid, or the stable pods keep failing
--   Suspended    spec.paused: the rollout is frozen where it is
--   Healthy      Ready=True with nothing under way
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": " .. c.message
    else
      text = c.message
    end
  end
  if text == "" then
    return fallback
  end
  return text
end

local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for roost-operator to observe generation " .. tostring(generation or 1)
  return hs
end

local conditions = status.conditions
local stalled = condition(conditions, "Stalled")
local reconciling = condition(conditions, "Reconciling")
local ready = condition(conditions, "Ready")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

if obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = describe(reconciling, "Rollout paused (spec.paused is true)")
  return hs
end

if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

if status.canary ~= nil and status.canary.revision ~= nil then
  hs.status = "Progressing"
  hs.message = "Canary " .. status.canary.revision .. " at weight "
    .. tostring(status.canary.weight or 0) .. "%"
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Ready condition")
return hs
